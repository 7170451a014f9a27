package wire

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Message is one frame's content. The set is closed: the types below are all
// the messages of this protocol version.
type Message interface {
	Type() Type
	// validate reports whether the message is one a peer may send; encoders
	// and decoders both apply it, so what one side sends the other accepts.
	validate() error
	// appendPayload appends the frame payload except trailing page data.
	appendPayload(b []byte) []byte
	// decode parses a whole payload (page data included).
	decode(p []byte) error
}

// pageCarrier is a message whose page data is sent from the caller's memory
// without copying it into the frame buffer.
type pageCarrier interface {
	appendPageData(iov [][]byte) [][]byte
}

func newMessage(t Type) Message {
	switch t {
	case TypeHello:
		return new(Hello)
	case TypeHelloAck:
		return new(HelloAck)
	case TypeIterationEnd:
		return new(IterationEnd)
	case TypeSwitchover:
		return new(Switchover)
	case TypeResumed:
		return new(Resumed)
	case TypeComplete:
		return new(Complete)
	case TypeError:
		return new(Error)
	case TypeAbort:
		return new(Abort)
	case TypeProgress:
		return new(Progress)
	case TypeReady:
		return new(Ready)
	case TypeGo:
		return new(Go)
	case TypeDeviceState:
		return new(DeviceState)
	case TypeResend:
		return new(Resend)
	case TypeMissing:
		return new(Missing)
	case TypeVerdict:
		return new(Verdict)
	case TypePageBatch:
		return new(PageBatch)
	case TypePageRequest:
		return new(PageRequest)
	case TypePageReply:
		return new(PageReply)
	}
	return nil
}

// HelloFlags are the options a source announces in Hello.
type HelloFlags uint32

const (
	// FlagStorageRefs: batches may carry KindRef entries; the destination must
	// be able to read the shared disks they name.
	FlagStorageRefs HelloFlags = 1 << 0
	// FlagPostcopy: the source will serve post-copy page requests, so the
	// destination may resume before every page arrived.
	FlagPostcopy HelloFlags = 1 << 1
	// FlagCompress: batches on the bulk connections may carry their page
	// data zstd-compressed (frame flag), whichever way they go.
	FlagCompress HelloFlags = 1 << 2
	// FlagRecover: this Hello reconnects session Hello.Session after its
	// connections were lost past Go. The destination answers an accepted
	// one with Missing, then the session is post-copy only: pushes and
	// page requests until Complete.
	FlagRecover HelloFlags = 1 << 3
	// FlagCompressS2: as FlagCompress, with S2 instead of zstd (CodecS2).
	// A Hello has at most one of the two.
	FlagCompressS2 HelloFlags = 1 << 4

	knownFlags = FlagStorageRefs | FlagPostcopy | FlagCompress | FlagRecover | FlagCompressS2
)

// Hello opens a session on the control connection (source → destination).
type Hello struct {
	Version   uint16
	Session   SessionID
	Mode      string // "precopy", "postcopy", "hybrid": the engine's names
	Guest     string // for logs and refusals
	PageSize  uint32
	Blocks    []Block // the guest's RAM geometry; batches index it
	BulkConns uint16
	Flags     HelloFlags
	// Command is the argv that starts the guest on the destination (a
	// process guest); empty when the destination knows how (a VMM driver).
	Command []string
}

func (*Hello) Type() Type { return TypeHello }

func checkName(what, s string, min int) error {
	if len(s) < min || len(s) > MaxNameLen {
		return fmt.Errorf("%w: %s length %d not in [%d, %d]", ErrRange, what, len(s), min, MaxNameLen)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%w: %s is not UTF-8", ErrMalformed, what)
	}
	return nil
}

func (m *Hello) validate() error {
	if m.PageSize != PageSize {
		return fmt.Errorf("%w: page size %d, version %d moves %d-byte pages", ErrRange, m.PageSize, Version, PageSize)
	}
	if err := checkName("mode", m.Mode, 1); err != nil {
		return err
	}
	if err := checkName("guest name", m.Guest, 0); err != nil {
		return err
	}
	if len(m.Blocks) == 0 || len(m.Blocks) > MaxBlocks {
		return fmt.Errorf("%w: %d RAM blocks, want 1..%d", ErrRange, len(m.Blocks), MaxBlocks)
	}
	for i, b := range m.Blocks {
		if err := checkName(fmt.Sprintf("block %d name", i), b.Name, 1); err != nil {
			return err
		}
		if b.Size == 0 || b.Size%PageSize != 0 || b.Size > MaxBlockSize {
			return fmt.Errorf("%w: block %q size %d is not a whole number of pages up to %d", ErrRange, b.Name, b.Size, uint64(MaxBlockSize))
		}
	}
	if m.BulkConns == 0 || m.BulkConns > MaxBulkConns {
		return fmt.Errorf("%w: %d bulk connections, want 1..%d", ErrRange, m.BulkConns, MaxBulkConns)
	}
	if m.Flags&^knownFlags != 0 {
		return fmt.Errorf("%w: unknown hello flags %#x", ErrRange, uint32(m.Flags&^knownFlags))
	}
	if m.Flags&FlagCompress != 0 && m.Flags&FlagCompressS2 != 0 {
		return fmt.Errorf("%w: hello names two compression codecs", ErrRange)
	}
	if len(m.Command) > MaxCommandArgs {
		return fmt.Errorf("%w: command of %d words, limit %d", ErrRange, len(m.Command), MaxCommandArgs)
	}
	for i, a := range m.Command {
		// argv words are C strings: any bytes but NUL.
		if len(a) > MaxTextLen || strings.IndexByte(a, 0) >= 0 {
			return fmt.Errorf("%w: command word %d (%d bytes) is too long or holds a NUL", ErrRange, i, len(a))
		}
	}
	return nil
}

func (m *Hello) appendPayload(b []byte) []byte {
	b = le.AppendUint16(b, m.Version)
	b = append(b, m.Session[:]...)
	b = appendString(b, m.Mode)
	b = appendString(b, m.Guest)
	b = le.AppendUint32(b, m.PageSize)
	b = binary.AppendUvarint(b, uint64(len(m.Blocks)))
	for _, blk := range m.Blocks {
		b = appendString(b, blk.Name)
		b = binary.AppendUvarint(b, blk.Size)
	}
	b = le.AppendUint16(b, m.BulkConns)
	b = le.AppendUint32(b, uint32(m.Flags))
	b = binary.AppendUvarint(b, uint64(len(m.Command)))
	for _, a := range m.Command {
		b = appendString(b, a)
	}
	return b
}

func (m *Hello) decode(p []byte) error {
	d := decoder{b: p}
	m.Version = d.u16("version")
	copy(m.Session[:], d.take(len(m.Session), "session id"))
	m.Mode = d.str("mode", MaxNameLen)
	m.Guest = d.str("guest name", MaxNameLen)
	m.PageSize = d.u32("page size")
	n := d.count("block count", MaxBlocks, 2)
	m.Blocks = nil
	if n > 0 {
		m.Blocks = make([]Block, n)
	}
	for i := range m.Blocks {
		m.Blocks[i].Name = d.str("block name", MaxNameLen)
		m.Blocks[i].Size = d.uvarint("block size")
	}
	m.BulkConns = d.u16("bulk connections")
	m.Flags = HelloFlags(d.u32("flags"))
	m.Command = nil
	if n := d.count("command words", MaxCommandArgs, 1); n > 0 {
		m.Command = make([]string, n)
		for i := range m.Command {
			m.Command[i] = string(d.take(d.count("command word length", MaxTextLen, 1), "command word"))
		}
	}
	if err := d.finish(); err != nil {
		return err
	}
	return m.validate()
}

// RefuseCode says why a destination refused a Hello.
type RefuseCode uint8

// Refusal reasons.
const (
	RefuseNone        RefuseCode = 0
	RefuseVersion     RefuseCode = 1 // Hello.Version differs
	RefuseGeometry    RefuseCode = 2 // RAM blocks differ from the destination's
	RefuseBusy        RefuseCode = 3 // already migrating this guest or another
	RefuseUnsupported RefuseCode = 4 // mode or flags this destination cannot do
	RefuseOther       RefuseCode = 5 // see the message
	// RefuseCompleted answers a reconnection (FlagRecover) to a session
	// that completed on the destination: every page is in place and the
	// guest runs there. Its Complete was lost with the link.
	RefuseCompleted RefuseCode = 6
	numRefuseCodes  RefuseCode = 7
)

func (c RefuseCode) String() string {
	switch c {
	case RefuseNone:
		return "accepted"
	case RefuseVersion:
		return "version mismatch"
	case RefuseGeometry:
		return "RAM geometry mismatch"
	case RefuseBusy:
		return "busy"
	case RefuseUnsupported:
		return "unsupported"
	case RefuseOther:
		return "refused"
	case RefuseCompleted:
		return "session completed"
	}
	return fmt.Sprintf("refusal(%d)", uint8(c))
}

// HelloAck answers Hello (destination → source).
type HelloAck struct {
	Accepted bool
	Code     RefuseCode // RefuseNone iff Accepted
	Message  string
}

func (*HelloAck) Type() Type { return TypeHelloAck }

func (m *HelloAck) validate() error {
	if m.Accepted != (m.Code == RefuseNone) || m.Code >= numRefuseCodes {
		return fmt.Errorf("%w: hello ack accepted=%v with code %d", ErrRange, m.Accepted, m.Code)
	}
	if len(m.Message) > MaxTextLen || !utf8.ValidString(m.Message) {
		return fmt.Errorf("%w: hello ack message of %d bytes", ErrRange, len(m.Message))
	}
	return nil
}

func (m *HelloAck) appendPayload(b []byte) []byte {
	b = append(b, boolByte(m.Accepted), byte(m.Code))
	return appendString(b, m.Message)
}

func (m *HelloAck) decode(p []byte) error {
	d := decoder{b: p}
	m.Accepted = d.bool("accepted")
	m.Code = RefuseCode(d.u8("code"))
	m.Message = d.str("message", MaxTextLen)
	if err := d.finish(); err != nil {
		return err
	}
	return m.validate()
}

func boolByte(v bool) byte {
	if v {
		return 1
	}
	return 0
}

// IterationEnd says the source has sent every batch of Iteration: Batches[i]
// batches of it went on bulk connection i. Bulk connections are independent
// streams, so this may arrive before those batches; the destination knows the
// iteration is complete when it has counted them all.
type IterationEnd struct {
	Iteration uint32
	Batches   []uint64
}

func (*IterationEnd) Type() Type { return TypeIterationEnd }

func (m *IterationEnd) validate() error {
	if len(m.Batches) == 0 || len(m.Batches) > MaxBulkConns {
		return fmt.Errorf("%w: iteration end for %d bulk connections", ErrRange, len(m.Batches))
	}
	return nil
}

func (m *IterationEnd) appendPayload(b []byte) []byte {
	b = le.AppendUint32(b, m.Iteration)
	b = binary.AppendUvarint(b, uint64(len(m.Batches)))
	for _, n := range m.Batches {
		b = binary.AppendUvarint(b, n)
	}
	return b
}

func (m *IterationEnd) decode(p []byte) error {
	d := decoder{b: p}
	m.Iteration = d.u32("iteration")
	n := d.count("bulk connection count", MaxBulkConns, 1)
	m.Batches = make([]uint64, n)
	for i := range m.Batches {
		m.Batches[i] = d.uvarint("batch count")
	}
	if err := d.finish(); err != nil {
		return err
	}
	return m.validate()
}

// Switchover: the source has paused the guest after Iteration (its last
// IterationEnd). Pending lists the pages the destination has NOT been sent
// (or must treat as stale): they arrive later by post-copy (urgent requests or
// background batches). An empty Pending means everything is in place.
// DeviceState: the VMM's device state follows on the control connection,
// in DeviceState frames ended by a Last one.
type Switchover struct {
	Iteration   uint32
	Pending     []Run
	DeviceState bool
}

func (*Switchover) Type() Type { return TypeSwitchover }

func (m *Switchover) validate() error { return checkRuns(m.Pending) }

func (m *Switchover) appendPayload(b []byte) []byte {
	b = le.AppendUint32(b, m.Iteration)
	b = appendRuns(b, m.Pending)
	if m.DeviceState {
		return append(b, 1)
	}
	return append(b, 0)
}

func (m *Switchover) decode(p []byte) error {
	d := decoder{b: p}
	m.Iteration = d.u32("iteration")
	m.Pending = decodeRuns(&d)
	m.DeviceState = d.bool("device state")
	if err := d.finish(); err != nil {
		return err
	}
	return m.validate()
}

// Resend asks the source to send Pages again as data in a later pre-copy
// pass (control connection, destination → source): their storage
// references failed at the destination (hash mismatch, read error, a disk
// it lacks), so the layout was wrong for them. Only sent before Switchover;
// references that fail later are owed after switchover instead.
type Resend struct {
	Pages []Run // sorted, not empty
}

func (*Resend) Type() Type { return TypeResend }

func (m *Resend) validate() error {
	if len(m.Pages) == 0 {
		return fmt.Errorf("%w: resend of no pages", ErrRange)
	}
	return checkRuns(m.Pages)
}

func (m *Resend) appendPayload(b []byte) []byte { return appendRuns(b, m.Pages) }

func (m *Resend) decode(p []byte) error {
	d := decoder{b: p}
	m.Pages = decodeRuns(&d)
	if err := d.finish(); err != nil {
		return err
	}
	return m.validate()
}

// Missing lists every page the destination still lacks when a session is
// recovered (control connection, destination → source, first message after
// the HelloAck of a FlagRecover Hello). The source sends exactly these, as
// post-copy pushes and on request, whatever it believed was owed: the
// destination knows what it placed, the source cannot.
type Missing struct {
	Pages []Run // sorted; empty when nothing is missing
}

func (*Missing) Type() Type { return TypeMissing }

func (m *Missing) validate() error {
	if len(m.Pages) == 0 {
		return nil
	}
	return checkRuns(m.Pages)
}

func (m *Missing) appendPayload(b []byte) []byte { return appendRuns(b, m.Pages) }

func (m *Missing) decode(p []byte) error {
	d := decoder{b: p}
	m.Pages = decodeRuns(&d)
	if err := d.finish(); err != nil {
		return err
	}
	return m.validate()
}

// Verdict is the destination's running account of the storage references
// it has checked before switchover (control connection, destination →
// source): Checked of them were read and compared with their hash, Failed of
// those failed. The Resend for the failures precedes the Verdict that counts
// them. The source compares Checked with the references it sent to see how
// far the restore lags, and Failed with Checked to judge the layout: with a
// wrong layout it keeps passing until the lagging failures are handed back,
// so their pages go as data before switchover instead of by post-copy
// fault from the paused source.
type Verdict struct {
	Checked uint64
	Failed  uint64
}

func (*Verdict) Type() Type { return TypeVerdict }

func (m *Verdict) validate() error {
	if m.Failed > m.Checked {
		return fmt.Errorf("%w: %d of %d checked references failed", ErrRange, m.Failed, m.Checked)
	}
	return nil
}

func (m *Verdict) appendPayload(b []byte) []byte {
	b = binary.AppendUvarint(b, m.Checked)
	return binary.AppendUvarint(b, m.Failed)
}

func (m *Verdict) decode(p []byte) error {
	d := decoder{b: p}
	m.Checked = d.uvarint("checked")
	m.Failed = d.uvarint("failed")
	if err := d.finish(); err != nil {
		return err
	}
	return m.validate()
}

// Ready: the destination has every page of the final iteration in place,
// has made the pending pages missing, and waits for Go to resume the guest
// (destination → source). Until the source sends Go, it knows the
// destination has not resumed: any failure before then is a clean abort.
type Ready struct{}

func (*Ready) Type() Type                    { return TypeReady }
func (*Ready) validate() error               { return nil }
func (*Ready) appendPayload(b []byte) []byte { return b }
func (*Ready) decode(p []byte) error {
	d := decoder{b: p}
	return d.finish()
}

// Go: resume the guest (source → destination, after Ready). Once it is
// sent, the source can no longer tell whether the destination runs the
// guest, so it never resumes its own copy automatically.
type Go struct{}

func (*Go) Type() Type                    { return TypeGo }
func (*Go) validate() error               { return nil }
func (*Go) appendPayload(b []byte) []byte { return b }
func (*Go) decode(p []byte) error {
	d := decoder{b: p}
	return d.finish()
}

// DeviceState carries a piece of the VMM's device state (source →
// destination, right after a Switchover that announces it): an opaque
// stream, such as QEMU's migration stream with x-ignore-shared, cut into
// frames. Last ends the stream; a VMM without device state sends none.
type DeviceState struct {
	Data []byte
	Last bool
}

func (*DeviceState) Type() Type { return TypeDeviceState }

func (m *DeviceState) validate() error {
	if len(m.Data) > MaxDeviceState {
		return fmt.Errorf("%w: device state piece of %d bytes exceeds %d", ErrRange, len(m.Data), MaxDeviceState)
	}
	// Only the last piece may be empty: an empty piece that does not end
	// the stream carries nothing and would let a peer loop us for free.
	if len(m.Data) == 0 && !m.Last {
		return fmt.Errorf("%w: empty device state piece that is not the last", ErrRange)
	}
	return nil
}

func (m *DeviceState) appendPayload(b []byte) []byte {
	last := byte(0)
	if m.Last {
		last = 1
	}
	b = append(b, last)
	// Length-prefixed, so that a cut-off frame is refused rather than taken
	// for a shorter piece.
	b = binary.AppendUvarint(b, uint64(len(m.Data)))
	return append(b, m.Data...)
}

func (m *DeviceState) decode(p []byte) error {
	d := decoder{b: p}
	m.Last = d.bool("last")
	n := d.count("device state length", MaxDeviceState, 1)
	data := d.take(n, "device state")
	if err := d.finish(); err != nil {
		return err
	}
	m.Data = nil
	if n > 0 {
		m.Data = append([]byte(nil), data...)
	}
	return m.validate()
}

// Resumed: the destination guest runs (destination → source). From here on
// the source must keep serving pages until Complete.
type Resumed struct{}

func (*Resumed) Type() Type                    { return TypeResumed }
func (*Resumed) validate() error               { return nil }
func (*Resumed) appendPayload(b []byte) []byte { return b }
func (*Resumed) decode(p []byte) error {
	d := decoder{b: p}
	return d.finish()
}

// Complete ends a session: every page is in place (destination → source,
// with the destination's figures; the source may answer with its own).
type Complete struct {
	Figures json.RawMessage // a JSON value; empty means none
}

func (*Complete) Type() Type { return TypeComplete }

func (m *Complete) validate() error {
	if len(m.Figures) > MaxFiguresLen {
		return fmt.Errorf("%w: figures of %d bytes exceed %d", ErrRange, len(m.Figures), MaxFiguresLen)
	}
	if len(m.Figures) > 0 && !json.Valid(m.Figures) {
		return fmt.Errorf("%w: figures are not JSON", ErrMalformed)
	}
	return nil
}

func (m *Complete) appendPayload(b []byte) []byte { return append(b, m.Figures...) }

func (m *Complete) decode(p []byte) error {
	m.Figures = nil
	if len(p) > 0 {
		m.Figures = append(json.RawMessage(nil), p...)
	}
	return m.validate()
}

// ErrorCode classifies an Error message.
type ErrorCode uint16

// Error codes; a receiver treats codes it does not know as ErrorInternal.
const (
	ErrorInternal ErrorCode = 1 // a bug or an unexpected local failure
	ErrorProtocol ErrorCode = 2 // the peer sent something invalid
	ErrorStorage  ErrorCode = 3 // shared storage unreadable
	ErrorGuest    ErrorCode = 4 // the guest or its VMM failed
	ErrorResource ErrorCode = 5 // disk full, out of memory
)

// Error reports a failure that ends the session (either direction).
type Error struct {
	Code    ErrorCode
	Message string
}

func (*Error) Type() Type { return TypeError }

func (m *Error) validate() error {
	if len(m.Message) > MaxTextLen || !utf8.ValidString(m.Message) {
		return fmt.Errorf("%w: error message of %d bytes", ErrRange, len(m.Message))
	}
	return nil
}

func (m *Error) appendPayload(b []byte) []byte {
	b = le.AppendUint16(b, uint16(m.Code))
	return appendString(b, m.Message)
}

func (m *Error) decode(p []byte) error {
	d := decoder{b: p}
	m.Code = ErrorCode(d.u16("code"))
	m.Message = d.str("message", MaxTextLen)
	if err := d.finish(); err != nil {
		return err
	}
	return m.validate()
}

// Abort cancels the session before the destination resumed (source →
// destination, or destination → source): the destination discards what it
// placed, the source guest keeps running.
type Abort struct {
	Reason string
}

func (*Abort) Type() Type { return TypeAbort }

func (m *Abort) validate() error {
	if len(m.Reason) > MaxTextLen || !utf8.ValidString(m.Reason) {
		return fmt.Errorf("%w: abort reason of %d bytes", ErrRange, len(m.Reason))
	}
	return nil
}

func (m *Abort) appendPayload(b []byte) []byte { return appendString(b, m.Reason) }

func (m *Abort) decode(p []byte) error {
	d := decoder{b: p}
	m.Reason = d.str("reason", MaxTextLen)
	if err := d.finish(); err != nil {
		return err
	}
	return m.validate()
}

// Progress is the destination's periodic report (destination → source):
// pages placed so far and pages still missing after switchover, and,
// before switchover, the pre-copy batches it has applied, over every bulk
// connection: what TCP has acknowledged may still wait in its socket
// buffers behind a destination short of CPU, and the source waits for
// those before it pauses the guest.
type Progress struct {
	Iteration uint32
	Placed    uint64
	Missing   uint64
	Batches   uint64
}

func (*Progress) Type() Type      { return TypeProgress }
func (*Progress) validate() error { return nil }

func (m *Progress) appendPayload(b []byte) []byte {
	b = le.AppendUint32(b, m.Iteration)
	b = binary.AppendUvarint(b, m.Placed)
	b = binary.AppendUvarint(b, m.Missing)
	return binary.AppendUvarint(b, m.Batches)
}

func (m *Progress) decode(p []byte) error {
	d := decoder{b: p}
	m.Iteration = d.u32("iteration")
	m.Placed = d.uvarint("placed")
	m.Missing = d.uvarint("missing")
	m.Batches = d.uvarint("batches")
	return d.finish()
}

// PageRequest asks the source for Count pages from Page of Block (urgent
// connection, destination → source). The source answers with Count
// PageReplies, in page order.
type PageRequest struct {
	Block uint32
	Page  uint64
	Count uint32
}

func (*PageRequest) Type() Type { return TypePageRequest }

func (m *PageRequest) validate() error {
	if m.Count == 0 || m.Count > MaxRequestPages || m.Page >= MaxPages || m.Page+uint64(m.Count) > MaxPages {
		return fmt.Errorf("%w: request of %d pages at %d", ErrRange, m.Count, m.Page)
	}
	return nil
}

func (m *PageRequest) appendPayload(b []byte) []byte {
	b = le.AppendUint32(b, m.Block)
	b = le.AppendUint64(b, m.Page)
	return le.AppendUint32(b, m.Count)
}

func (m *PageRequest) decode(p []byte) error {
	d := decoder{b: p}
	m.Block = d.u32("block")
	m.Page = d.u64("page")
	m.Count = d.u32("count")
	if err := d.finish(); err != nil {
		return err
	}
	return m.validate()
}

// PageReply carries one page (urgent connection, source → destination).
// Data is PageSize bytes for KindData and nil otherwise; Ref is set for
// KindRef. A received Data aliases the connection's buffer and is valid
// until the next ReadFrame on it.
type PageReply struct {
	Block uint32
	Page  uint64
	Kind  Kind
	Ref   Ref
	Data  []byte
}

func (*PageReply) Type() Type { return TypePageReply }

func (m *PageReply) validate() error {
	if m.Page >= MaxPages {
		return fmt.Errorf("%w: reply for page %d", ErrRange, m.Page)
	}
	switch m.Kind {
	case KindData:
		if len(m.Data) != PageSize {
			return fmt.Errorf("%w: data reply of %d bytes", ErrMalformed, len(m.Data))
		}
	case KindZero, KindRef:
		if m.Data != nil {
			return fmt.Errorf("%w: %s reply with %d data bytes", ErrMalformed, m.Kind, len(m.Data))
		}
	default:
		return fmt.Errorf("%w: reply kind %d", ErrMalformed, m.Kind)
	}
	if m.Kind != KindRef && m.Ref != (Ref{}) {
		return fmt.Errorf("%w: %s reply with a storage reference", ErrMalformed, m.Kind)
	}
	return nil
}

func (m *PageReply) appendPayload(b []byte) []byte {
	b = le.AppendUint32(b, m.Block)
	b = le.AppendUint64(b, m.Page)
	b = append(b, byte(m.Kind))
	if m.Kind == KindRef {
		b = appendRef(b, m.Ref)
	}
	return b
}

func (m *PageReply) appendPageData(iov [][]byte) [][]byte {
	if m.Kind != KindData {
		return iov
	}
	return append(iov, m.Data)
}

func (m *PageReply) decode(p []byte) error {
	d := decoder{b: p}
	m.Block = d.u32("block")
	m.Page = d.u64("page")
	m.Kind = Kind(d.u8("kind"))
	m.Ref, m.Data = Ref{}, nil
	switch m.Kind {
	case KindData:
		m.Data = d.take(PageSize, "page data")
	case KindRef:
		m.Ref = decodeRef(&d)
	case KindZero:
	default:
		d.fail(ErrMalformed, "page kind %d", m.Kind)
	}
	if err := d.finish(); err != nil {
		return err
	}
	return m.validate()
}

func appendRef(b []byte, r Ref) []byte {
	b = le.AppendUint16(b, r.Disk)
	b = le.AppendUint64(b, r.Offset)
	return append(b, r.Hash[:]...)
}

func decodeRef(d *decoder) Ref {
	var r Ref
	r.Disk = d.u16("ref disk")
	r.Offset = d.u64("ref offset")
	copy(r.Hash[:], d.take(len(r.Hash), "ref hash"))
	return r
}
