package wire

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Frame header: type u8 | flags u8 | reserved u16 | payload length u32 (LE).
// Flags are zero but for a compressed batch's codec (frameCompressed,
// frameCompressedS2); reserved is zero.
const frameHeaderLen = 8

const (
	readBufSize = 256 << 10
	// headerAhead is how far past a frame header the reader may read in the
	// same system call: small frames (a PageReply: 4117 bytes) arrive whole,
	// while most of a batch's page data is left for a direct read into its
	// destination.
	headerAhead = 8 << 10
	// keepBuf: larger scratch buffers are dropped after use, so one big
	// Switchover does not pin its memory for the rest of the session.
	keepBuf = 4 << 20
)

// Conn is one connection of a session. One goroutine may read (ReadFrame,
// ReadData) while any number write (WriteFrame calls are serialized).
//
// Errors are sticky once a frame is partly read or written, because the
// stream position is then unknown: every later call returns the same error.
// A read interrupted by its context before any byte of a frame arrived
// leaves the connection usable.
type Conn struct {
	nc    net.Conn
	role  Role
	index int
	geo   *geometry

	// Read side, owned by the single reader.
	rd       reader
	payload  []byte
	table    []byte
	batch    PageBatch
	reply    PageReply
	request  PageRequest
	dataLeft int64 // page data of the last batch not yet read
	// codec: what this bulk connection's session agreed to compress
	// batches with, both ways (CodecNone: nothing).
	codec  Codec
	zr     decompressor
	zdata  []byte // a compressed batch's page data, decompressed, not yet read
	riov   [][]byte
	rctx   context.Context // the ReadFrame ctx governing ReadData
	rerr   error
	rwatch watch
	rdl    time.Time

	wmu     sync.Mutex
	wbuf    []byte
	zw      compressor
	iov     net.Buffers
	iovw    net.Buffers
	werr    error
	written atomic.Uint64
	wwatch  watch
	wdl     time.Time
	pacer   atomic.Pointer[pacerBox]
	piece   net.Buffers // the part of a paced frame being written
}

// Pacer paces a connection's writes (a bandwidth cap): Pace waits until n
// bytes, or the first part of them, may go, and returns how many (1..n);
// it fails only when ctx ends.
type Pacer interface {
	Pace(ctx context.Context, n int) (int, error)
}

type pacerBox struct{ p Pacer }

// SetPacer makes every later frame written on c wait for p, piece by piece
// (nil: no pacing). Safe to call at any time.
func (c *Conn) SetPacer(p Pacer) {
	if p == nil {
		c.pacer.Store(nil)
		return
	}
	c.pacer.Store(&pacerBox{p})
}

// NewConn wraps an established connection whose handshake is done (Dial and
// Listener.Accept do both). The Conn owns nc from now on.
func NewConn(nc net.Conn, role Role, index int) *Conn {
	return &Conn{nc: nc, role: role, index: index, rd: reader{src: nc, buf: make([]byte, readBufSize)}}
}

// Role is what the connection carries.
func (c *Conn) Role() Role { return c.role }

// Index is the bulk connection's number (0 for control and urgent).
func (c *Conn) Index() int { return c.index }

// BytesWritten is the number of bytes of frames written so far (the
// preamble not included). Safe to call at any time.
func (c *Conn) BytesWritten() uint64 { return c.written.Load() }

// BytesRead is the number of bytes read from the peer after the preamble.
// Safe to call at any time.
func (c *Conn) BytesRead() uint64 { return c.rd.read.Load() }

// Unacked is how many bytes written on c the peer has not acknowledged
// yet: zero once everything written has arrived. Not for a connection
// other than TCP (or TLS over TCP), where it is always zero.
func (c *Conn) Unacked() (int, error) { return unacked(c.nc) }

// SetNotSentLowat caps what the kernel holds written on c but not yet
// sent at about n bytes: a writer waits rather than queue more, so a
// writer that holds back (to let urgent traffic ahead) is not followed by
// megabytes it queued earlier.
func (c *Conn) SetNotSentLowat(n int) error { return setNotSentLowat(c.nc, n) }

// NetConn is the underlying connection, for addresses and socket options.
func (c *Conn) NetConn() net.Conn { return c.nc }

// Close closes the connection; blocked reads and writes return. A context
// watch still registered goes when its context ends (it only sets a
// deadline on the closed socket then).
func (c *Conn) Close() error { return c.nc.Close() }

func (c *Conn) String() string {
	if c.role == RoleBulk {
		return fmt.Sprintf("bulk conn %d", c.index)
	}
	return c.role.String() + " conn"
}

// SetGeometry makes the connection reject pages outside the session's RAM
// blocks and IterationEnds for another number of bulk connections. Call it
// before reading; Dial and Accept do.
func (c *Conn) SetGeometry(h *Hello) {
	g := &geometry{bulk: int(h.BulkConns), pages: make([]uint64, len(h.Blocks))}
	for i, b := range h.Blocks {
		g.pages[i] = b.Pages()
	}
	c.geo = g
}

// watch turns a context's cancellation into a past deadline on the socket,
// which is what unblocks a read or write in progress. A watch stays
// registered across operations while they use the same context (the same
// Done channel), so a session's steady stream of frames costs no
// registration each.
type watch struct {
	doneCh <-chan struct{} // the watched context's Done
	stop   func() bool
	fired  chan struct{}
}

// aLongTimeAgo is a deadline that has passed.
func aLongTimeAgo() time.Time { return time.Unix(1, 0) }

// arm makes ctx govern the next operations through set: its deadline
// becomes the socket's, its cancellation a past deadline.
func arm(ctx context.Context, w *watch, cur *time.Time, set func(time.Time) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	done := ctx.Done()
	if w.stop != nil && w.doneCh != done {
		disarm(w, cur)
	}
	d, _ := ctx.Deadline()
	if !d.Equal(*cur) {
		if err := set(d); err != nil {
			return err
		}
		*cur = d
	}
	if done != nil && w.stop == nil {
		fired := make(chan struct{})
		w.doneCh, w.fired = done, fired
		w.stop = context.AfterFunc(ctx, func() {
			_ = set(aLongTimeAgo())
			close(fired)
		})
	}
	return nil
}

// disarm unregisters the watch.
func disarm(w *watch, cur *time.Time) {
	if w.stop == nil {
		return
	}
	if !w.stop() {
		// The callback ran or is running: wait so it cannot move the deadline
		// under a later operation, and make the next arm set it afresh.
		<-w.fired
		*cur = aLongTimeAgo()
	}
	*w = watch{}
}

// ctxError prefers the context's reason over the socket's deadline error.
func ctxError(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return cerr
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
			return context.DeadlineExceeded
		}
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: %w", ErrTruncated, err)
	}
	return err
}

// ReadFrame reads the next frame. For a *PageBatch the entries are decoded
// and the page data is left on the connection: read it with ReadData, still
// under ctx; whatever is not read is discarded by the next ReadFrame. The
// returned *PageBatch and *PageReply (and PageReply.Data) are reused: they
// are valid until the next ReadFrame. At a clean end of stream the error
// wraps io.EOF.
func (c *Conn) ReadFrame(ctx context.Context) (Message, error) {
	if c.rerr != nil {
		return nil, c.rerr
	}
	if err := arm(ctx, &c.rwatch, &c.rdl, c.nc.SetReadDeadline); err != nil {
		return nil, fmt.Errorf("read frame on %s: %w", c, err)
	}
	c.rctx = ctx
	m, clean, err := c.readFrame()
	if err != nil {
		err = fmt.Errorf("read frame on %s: %w", c, ctxError(ctx, err))
		if !clean {
			c.rerr = err
		}
		return nil, err
	}
	return m, nil
}

func (c *Conn) readFrame() (m Message, clean bool, err error) {
	if c.zdata != nil {
		c.zdata, c.dataLeft = nil, 0
	}
	if c.dataLeft > 0 {
		if err := c.rd.discard(c.dataLeft); err != nil {
			return nil, false, err
		}
		c.dataLeft = 0
	}
	if c.rd.buffered() == 0 {
		if err := c.rd.fill(headerAhead); err != nil {
			return nil, true, err
		}
	}
	hdr, err := c.rd.next(frameHeaderLen, headerAhead)
	if err != nil {
		return nil, false, err
	}
	typ, flags, length := Type(hdr[0]), hdr[1], le.Uint32(hdr[4:])
	compressed := c.codec != CodecNone && flags == c.codec.frameFlag() && typ == TypePageBatch
	switch {
	case typ.role() == 0:
		return nil, false, fmt.Errorf("%w %d", ErrUnknownType, hdr[0])
	case (flags != 0 && !compressed) || hdr[2] != 0 || hdr[3] != 0:
		return nil, false, fmt.Errorf("%w: %s frame flags %#x reserved %#x", ErrMalformed, typ, hdr[1], le.Uint16(hdr[2:]))
	case typ.role() != c.role:
		return nil, false, fmt.Errorf("%w: %s frame", ErrUnexpected, typ)
	case length > typ.maxLen():
		return nil, false, fmt.Errorf("%w: %s frame of %d bytes, limit %d", ErrFrameTooLarge, typ, length, typ.maxLen())
	}
	if typ == TypePageBatch {
		b, err := c.readBatch(length, compressed)
		return b, false, err
	}
	p, err := c.readPayload(int(length))
	if err != nil {
		return nil, false, err
	}
	switch typ {
	case TypePageReply:
		m = &c.reply
	case TypePageRequest:
		m = &c.request
	default:
		m = newMessage(typ)
	}
	if err := m.decode(p); err != nil {
		return nil, false, fmt.Errorf("decode %s: %w", typ, err)
	}
	if err := c.geo.check(m); err != nil {
		return nil, false, fmt.Errorf("check %s: %w", typ, err)
	}
	return m, false, nil
}

// readPayload reads n bytes, growing its buffer as bytes arrive rather than
// trusting the announced length up front.
func (c *Conn) readPayload(n int) ([]byte, error) {
	buf := c.payload[:0]
	for len(buf) < n {
		chunk := min(n-len(buf), 1<<20)
		buf = slices.Grow(buf, chunk)
		k := len(buf)
		buf = buf[:k+chunk]
		if err := c.rd.readFull(buf[k:], 0); err != nil {
			return nil, err
		}
	}
	if cap(buf) <= keepBuf {
		c.payload = buf
	}
	return buf, nil
}

func (c *Conn) readBatch(length uint32, compressed bool) (*PageBatch, error) {
	if length < batchHeaderLen {
		return nil, fmt.Errorf("%w: batch payload of %d bytes", ErrTruncated, length)
	}
	p, err := c.rd.next(batchHeaderLen, 0)
	if err != nil {
		return nil, err
	}
	h, nData, err := parseBatchHeader(p, length, compressed)
	if err != nil {
		return nil, err
	}
	c.table = slices.Grow(c.table[:0], int(h.tableLen))[:h.tableLen]
	if err := c.rd.readFull(c.table, 0); err != nil {
		return nil, err
	}
	b := &c.batch
	b.Reset(h.block, h.iteration)
	b.Data = nil
	if b.Entries, err = parseTable(c.table, h.entries, nData, b.Entries); err != nil {
		return nil, fmt.Errorf("decode batch table: %w", err)
	}
	if err := c.geo.check(b); err != nil {
		return nil, fmt.Errorf("check batch: %w", err)
	}
	if compressed {
		nData = dataEntries(b.Entries)
		if nData == 0 || nData > MaxBatchDataPages {
			return nil, fmt.Errorf("%w: compressed batch of %d data pages", ErrMalformed, nData)
		}
		z, err := c.readPayload(int(length - batchHeaderLen - h.tableLen))
		if err != nil {
			return nil, err
		}
		if c.zdata, err = c.zr.decompress(c.codec, z, nData*PageSize); err != nil {
			return nil, err
		}
	}
	c.dataLeft = int64(nData) * PageSize
	return b, nil
}

// DataLeft is the number of bytes of page data of the last batch not yet read.
func (c *Conn) DataLeft() int { return int(c.dataLeft) }

// ReadData reads the next len(dst) bytes of the current batch's page data
// (whole pages, in entry order) into dst: a contiguous dst for a run of
// consecutive data entries (PageBatch.DataRun) is filled by the socket
// directly. It is bounded by the ctx of the ReadFrame that returned the batch.
func (c *Conn) ReadData(dst []byte) error {
	if c.rerr != nil {
		return c.rerr
	}
	if len(dst)%PageSize != 0 || int64(len(dst)) > c.dataLeft {
		return fmt.Errorf("read page data on %s: %w: %d bytes asked, %d left in batch", c, ErrDataPending, len(dst), c.dataLeft)
	}
	if c.zdata != nil {
		c.zdata = c.zdata[copy(dst, c.zdata):]
		c.dataLeft -= int64(len(dst))
		return nil
	}
	ahead := int(min(c.dataLeft-int64(len(dst)), readBufSize))
	if err := c.rd.readFull(dst, ahead); err != nil {
		c.rerr = fmt.Errorf("read page data on %s: %w", c, ctxError(c.rctx, err))
		return c.rerr
	}
	c.dataLeft -= int64(len(dst))
	return nil
}

// ReadDataVec is ReadData into several destinations, filled in order: pass
// one slice per DataRun of a batch and its scattered pages are read from
// the socket straight into place with one readv, not page by page.
func (c *Conn) ReadDataVec(dsts [][]byte) error {
	if c.rerr != nil {
		return c.rerr
	}
	var total int64
	for _, d := range dsts {
		if len(d)%PageSize != 0 {
			return fmt.Errorf("read page data on %s: %w: a destination of %d bytes", c, ErrDataPending, len(d))
		}
		total += int64(len(d))
	}
	if total > c.dataLeft {
		return fmt.Errorf("read page data on %s: %w: %d bytes asked, %d left in batch", c, ErrDataPending, total, c.dataLeft)
	}
	if c.zdata != nil {
		for _, d := range dsts {
			c.zdata = c.zdata[copy(d, c.zdata):]
		}
		c.dataLeft -= total
		return nil
	}
	ahead := int(min(c.dataLeft-total, readBufSize))
	var err error
	if c.riov, err = c.rd.readVec(dsts, ahead, c.riov); err != nil {
		c.rerr = fmt.Errorf("read page data on %s: %w", c, ctxError(c.rctx, err))
		return c.rerr
	}
	c.dataLeft -= total
	return nil
}

// WriteFrame validates m and writes it as one frame. Page data (PageBatch.Data,
// PageReply.Data) goes from the caller's memory to the socket in one writev,
// without being copied; it must not change until WriteFrame returns.
func (c *Conn) WriteFrame(ctx context.Context, m Message) error {
	typ := m.Type()
	if err := m.validate(); err != nil {
		return fmt.Errorf("write %s on %s: %w", typ, c, err)
	}
	if typ.role() != c.role {
		return fmt.Errorf("write %s on %s: %w", typ, c, ErrUnexpected)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return c.werr
	}
	b := append(c.wbuf[:0], 0, 0, 0, 0, 0, 0, 0, 0) // header, filled below
	b = m.appendPayload(b)
	c.iov = append(c.iov[:0], nil) // b, once complete
	if pc, ok := m.(pageCarrier); ok {
		c.iov = pc.appendPageData(c.iov)
	}
	if c.codec != CodecNone && typ == TypePageBatch && len(c.iov) > 1 {
		z, ok, err := c.zw.compress(c.codec, c.iov[1:])
		if err != nil {
			clear(c.iov)
			return fmt.Errorf("write %s on %s: %w", typ, c, err)
		}
		if ok {
			clear(c.iov[1:])
			c.iov = append(c.iov[:1], z)
			b[1] = c.codec.frameFlag()
		}
	}
	total := len(b) - frameHeaderLen
	for _, d := range c.iov[1:] {
		total += len(d)
	}
	if uint64(total) > uint64(typ.maxLen()) {
		return fmt.Errorf("write %s on %s: %w: %d bytes, limit %d", typ, c, ErrFrameTooLarge, total, typ.maxLen())
	}
	b[0] = byte(typ)
	le.PutUint32(b[4:], uint32(total))
	if cap(b) <= keepBuf {
		c.wbuf = b
	}

	if err := arm(ctx, &c.wwatch, &c.wdl, c.nc.SetWriteDeadline); err != nil {
		return fmt.Errorf("write %s on %s: %w", typ, c, err)
	}
	var n int64
	var err error
	if pb := c.pacer.Load(); pb != nil {
		c.iov[0] = b
		n, err = c.writePaced(ctx, pb.p)
		clear(c.iov)
	} else if len(c.iov) == 1 {
		var k int
		k, err = c.nc.Write(b)
		n = int64(k)
	} else {
		c.iov[0] = b
		// WriteTo consumes the slice it is given: hand it a copy of the
		// header, kept in a field so it does not escape on every call.
		c.iovw = c.iov
		n, err = c.iovw.WriteTo(c.nc)
		clear(c.iov) // drop references to guest memory
	}
	c.written.Add(uint64(n))
	if err != nil {
		err = fmt.Errorf("write %s on %s: %w", typ, c, ctxError(ctx, err))
		if n > 0 {
			c.werr = err
		}
		return err
	}
	return nil
}

// writePaced writes the frame in c.iov in the pieces p grants, so that a
// batch of a megabyte does not go out in one burst past a cap.
func (c *Conn) writePaced(ctx context.Context, p Pacer) (int64, error) {
	left := 0
	for _, d := range c.iov {
		left += len(d)
	}
	var n int64
	iov := c.iov
	for left > 0 {
		k, err := p.Pace(ctx, left)
		if err != nil {
			return n, err
		}
		if k == left && n == 0 {
			// Granted whole (no cap, or a small frame): one writev.
			c.iovw = c.iov
			return c.iovw.WriteTo(c.nc)
		}
		// The next k bytes of iov, splitting a buffer if need be.
		c.piece = c.piece[:0]
		for want := k; want > 0; {
			d := iov[0]
			if len(d) > want {
				c.piece = append(c.piece, d[:want])
				iov[0] = d[want:]
				break
			}
			c.piece = append(c.piece, d)
			want -= len(d)
			iov = iov[1:]
		}
		c.iovw = c.piece // WriteTo consumes its slice: keep piece's array
		w, err := c.iovw.WriteTo(c.nc)
		clear(c.piece)
		n += w
		if err != nil {
			return n, err
		}
		left -= k
	}
	return n, nil
}

// geometry is what a session's Hello says about valid page addresses.
type geometry struct {
	pages []uint64 // per block
	bulk  int
}

func (g *geometry) span(what string, block uint32, page, count uint64) error {
	if int64(block) >= int64(len(g.pages)) {
		return fmt.Errorf("%w: %s block %d, guest has %d", ErrRange, what, block, len(g.pages))
	}
	if page >= g.pages[block] || count > g.pages[block]-page {
		return fmt.Errorf("%w: %s pages %d..%d beyond block %d of %d pages", ErrRange, what, page, page+count, block, g.pages[block])
	}
	return nil
}

// check applies the geometry to m; a nil geometry accepts everything.
func (g *geometry) check(m Message) error {
	if g == nil {
		return nil
	}
	switch m := m.(type) {
	case *PageBatch:
		last := m.Entries[len(m.Entries)-1].Page
		return g.span("batch", m.Block, last, 1)
	case *PageRequest:
		return g.span("request", m.Block, m.Page, uint64(m.Count))
	case *PageReply:
		return g.span("reply", m.Block, m.Page, 1)
	case *Switchover:
		for _, r := range m.Pending {
			if err := g.span("pending run", r.Block, r.Page, r.Count); err != nil {
				return err
			}
		}
	case *Resend:
		for _, r := range m.Pages {
			if err := g.span("resend run", r.Block, r.Page, r.Count); err != nil {
				return err
			}
		}
	case *Missing:
		for _, r := range m.Pages {
			if err := g.span("missing run", r.Block, r.Page, r.Count); err != nil {
				return err
			}
		}
	case *IterationEnd:
		if len(m.Batches) != g.bulk {
			return fmt.Errorf("%w: iteration end for %d bulk connections, session has %d", ErrRange, len(m.Batches), g.bulk)
		}
	}
	return nil
}
