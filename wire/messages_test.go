package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"reflect"
	"testing"
)

// page returns a page whose bytes depend on seed, so swapped or misplaced
// pages show up.
func page(seed uint64) []byte {
	p := make([]byte, PageSize)
	for i := 0; i < PageSize; i += 8 {
		binary.LittleEndian.PutUint64(p[i:], seed*0x9e3779b97f4a7c15+uint64(i))
	}
	return p
}

func testRef(i uint64) Ref {
	r := Ref{Disk: uint16(i), Offset: i * 16384}
	binary.LittleEndian.PutUint64(r.Hash[:], ^i)
	binary.LittleEndian.PutUint64(r.Hash[8:], i*7)
	return r
}

func testHello() *Hello {
	return &Hello{
		Version: Version, Session: SessionID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16},
		Mode: "hybrid", Guest: "db-1 ✓", PageSize: PageSize,
		Blocks:    []Block{{Name: "ram0", Size: 1 << 30}, {Name: "pc.rom", Size: 128 << 10}},
		BulkConns: 3, Flags: FlagStorageRefs | FlagPostcopy,
		Command: []string{"/usr/bin/dmig", "testguest", "run", "--ram=/dev/shm/g 1", "\xff bytes"},
	}
}

func mixedBatch() *PageBatch {
	b := new(PageBatch)
	b.Reset(0, 7)
	b.AddZero(0)
	b.AddData(1, page(1))
	b.AddData(2, page(2))
	b.AddRef(200, testRef(200))
	b.AddData(1000, page(1000))
	b.AddZero(1001)
	b.AddRef(1<<17, testRef(3))
	return b
}

// sampleMessages has at least one of every message type, with edge values.
func sampleMessages() []Message {
	return []Message{
		testHello(),
		&HelloAck{Accepted: true},
		&HelloAck{Code: RefuseGeometry, Message: "ram0 is 2147483648 bytes here"},
		&HelloAck{Code: RefuseCompleted, Message: "session 00 of guest g completed on this host"},
		&IterationEnd{Iteration: 3, Batches: []uint64{0, 1, 1 << 40}},
		&Switchover{Iteration: 9},
		&Switchover{Iteration: 9, Pending: []Run{{0, 0, 1}, {0, 2, 300}, {0, 1 << 20, 5}, {1, 0, 32}, {1, 40, 1}}},
		&Switchover{Iteration: 3, DeviceState: true},
		&Resumed{},
		&Ready{},
		&Go{},
		&DeviceState{Data: []byte("QEVM\x00\x00\x00\x03"), Last: false},
		&DeviceState{Last: true},
		&DeviceState{Data: bytes.Repeat([]byte{0xa5}, 300), Last: true},
		&Complete{},
		&Complete{Figures: []byte(`{"mode":"hybrid","pages":{"data":12,"zero":3}}`)},
		&Error{Code: ErrorStorage, Message: "read disk 2 at 0x1000: EIO"},
		&Abort{Reason: "operator cancelled"},
		&Progress{Iteration: 2, Placed: 1 << 33, Missing: 17, Batches: 1 << 20},
		&Resend{Pages: []Run{{0, 7, 1}}},
		&Resend{Pages: []Run{{0, 0, 3}, {0, 9, 1}, {0, 1 << 20, 64}, {1, 31, 1}}},
		&Verdict{},
		&Verdict{Checked: 1 << 40, Failed: 3},
		&Missing{},
		&Missing{Pages: []Run{{0, 0, 3}, {1, 31, 1}}},
		mixedBatch(),
		func() Message { b := new(PageBatch); b.Reset(1, 1); b.AddZero(MaxPages - 1); return b }(),
		func() Message { b := new(PageBatch); b.Reset(0, IterationPostcopy); b.AddData(3, page(3)); return b }(),
		&PageRequest{Block: 1, Page: 40, Count: 3},
		&PageReply{Block: 0, Page: 5, Kind: KindData, Data: page(5)},
		&PageReply{Block: 0, Page: 6, Kind: KindZero},
		&PageReply{Block: 0, Page: 7, Kind: KindRef, Ref: testRef(7)},
	}
}

// comparable strips what legitimately differs between a sent and a received
// message: how page data was sliced and the sender's bookkeeping.
func comparable(t *testing.T, m Message) Message {
	t.Helper()
	if b, ok := m.(*PageBatch); ok {
		c := &PageBatch{Block: b.Block, Iteration: b.Iteration, Entries: append([]Entry(nil), b.Entries...)}
		if data := bytes.Join(b.Data, nil); len(data) > 0 {
			c.Data = [][]byte{data}
		}
		return c
	}
	return m
}

func TestMarshalRoundTrip(t *testing.T) {
	for _, m := range sampleMessages() {
		t.Run(m.Type().String(), func(t *testing.T) {
			frame, err := Marshal(m)
			if err != nil {
				t.Fatalf("marshal: %v", err)
			}
			got, err := Unmarshal(frame)
			if err != nil {
				t.Fatalf("unmarshal: %v", err)
			}
			if !reflect.DeepEqual(comparable(t, got), comparable(t, m)) {
				t.Fatalf("round trip changed the message:\n got %+v\nwant %+v", got, m)
			}
			again, err := Marshal(got)
			if err != nil || !bytes.Equal(again, frame) {
				t.Fatalf("re-encoding differs (err %v)", err)
			}
		})
	}
}

// Every strict prefix of a payload, with the header fixed to its length,
// must be refused: no decoder may accept a cut-off message.
func TestDecodeRejectsTruncatedPayloads(t *testing.T) {
	for _, m := range sampleMessages() {
		frame, err := Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		payload := frame[frameHeaderLen:]
		for n := range len(payload) {
			if n == 0 && (m.Type() == TypeComplete) {
				continue // an empty Complete is valid: no figures
			}
			cut := withPayload(m.Type(), payload[:n])
			if _, err := Unmarshal(cut); err == nil {
				t.Errorf("%s: payload cut to %d of %d bytes accepted", m.Type(), n, len(payload))
			}
		}
		// The frame itself cut short, header untouched.
		for n := range len(frame) {
			if _, err := Unmarshal(frame[:n]); !errors.Is(err, ErrTruncated) {
				t.Errorf("%s: frame cut to %d bytes: got %v, want ErrTruncated", m.Type(), n, err)
			}
		}
	}
}

func withPayload(t Type, p []byte) []byte {
	f := make([]byte, frameHeaderLen, frameHeaderLen+len(p))
	f[0] = byte(t)
	binary.LittleEndian.PutUint32(f[4:], uint32(len(p)))
	return append(f, p...)
}

func mustMarshal(t *testing.T, m Message) []byte {
	t.Helper()
	f, err := Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestDecodeRejectsMalformed(t *testing.T) {
	hello := func(edit func(h *Hello)) []byte {
		h := testHello()
		edit(h)
		// Bypass validate so the decoder is what refuses.
		return withPayload(TypeHello, h.appendPayload(nil))
	}
	batchPayload := func(block, iter, n, tableLen uint32, table []byte, data int) []byte {
		p := le.AppendUint32(nil, block)
		p = le.AppendUint32(p, iter)
		p = le.AppendUint32(p, n)
		p = le.AppendUint32(p, tableLen)
		p = append(p, table...)
		return withPayload(TypePageBatch, append(p, make([]byte, data)...))
	}
	progress := mustMarshal(t, &Progress{Iteration: 1, Placed: 2, Missing: 3, Batches: 4})
	tests := []struct {
		name  string
		frame []byte
		want  error
	}{
		{"unknown type", withPayload(Type(99), nil), ErrUnknownType},
		{"frame flags set", func() []byte { f := mustMarshal(t, &Resumed{}); f[1] = 1; return f }(), ErrMalformed},
		{"reserved set", func() []byte { f := mustMarshal(t, &Resumed{}); f[3] = 1; return f }(), ErrMalformed},
		{"oversize control frame", func() []byte {
			f := withPayload(TypeHello, nil)
			binary.LittleEndian.PutUint32(f[4:], maxControlFrame+1)
			return f
		}(), ErrFrameTooLarge},
		{"oversize urgent frame", func() []byte {
			f := withPayload(TypePageReply, nil)
			binary.LittleEndian.PutUint32(f[4:], maxUrgentFrame+1)
			return f
		}(), ErrFrameTooLarge},
		{"trailing bytes", append(progress[:len(progress):len(progress)], 0), ErrMalformed},
		{"trailing byte inside payload", withPayload(TypeProgress, append(progress[frameHeaderLen:len(progress):len(progress)], 0)), ErrMalformed},
		{"non-minimal varint", withPayload(TypeProgress, []byte{1, 0, 0, 0, 0x82, 0x00, 3}), ErrMalformed},
		{"resumed with payload", withPayload(TypeResumed, []byte{0}), ErrMalformed},
		{"hello page size", hello(func(h *Hello) { h.PageSize = 8192 }), ErrRange},
		{"hello no bulk conns", hello(func(h *Hello) { h.BulkConns = 0 }), ErrRange},
		{"hello too many bulk conns", hello(func(h *Hello) { h.BulkConns = MaxBulkConns + 1 }), ErrRange},
		{"hello partial page block", hello(func(h *Hello) { h.Blocks[0].Size = 4097 }), ErrRange},
		{"hello empty block", hello(func(h *Hello) { h.Blocks[1].Size = 0 }), ErrRange},
		{"hello no blocks", hello(func(h *Hello) { h.Blocks = nil }), ErrRange},
		{"hello unknown flags", hello(func(h *Hello) { h.Flags |= 1 << 9 }), ErrRange},
		{"hello empty mode", hello(func(h *Hello) { h.Mode = "" }), ErrRange},
		{"hello command with NUL", hello(func(h *Hello) { h.Command = []string{"a\x00b"} }), ErrRange},
		{"hello command too long", hello(func(h *Hello) { h.Command = make([]string, MaxCommandArgs+1) }), ErrRange},
		{"hello mode not utf-8", hello(func(h *Hello) { h.Mode = "\xff" }), ErrMalformed},
		{"hello block count lies", func() []byte {
			f := hello(func(h *Hello) {})
			// The block count varint follows version, session, mode, guest, page size.
			off := frameHeaderLen + 2 + 16 + 1 + len("hybrid") + 1 + len("db-1 ✓") + 4
			f[off] = 100
			return f
		}(), ErrTruncated},
		{"ack accepted with code", withPayload(TypeHelloAck, []byte{1, byte(RefuseBusy), 0}), ErrRange},
		{"ack refused without code", withPayload(TypeHelloAck, []byte{0, 0, 0}), ErrRange},
		{"ack unknown code", withPayload(TypeHelloAck, []byte{0, 77, 0}), ErrRange},
		{"ack bool 2", withPayload(TypeHelloAck, []byte{2, 0, 0}), ErrMalformed},
		{"iteration end no conns", withPayload(TypeIterationEnd, []byte{1, 0, 0, 0, 0}), ErrRange},
		{"iteration end count lies", withPayload(TypeIterationEnd, []byte{1, 0, 0, 0, 5, 1}), ErrTruncated},
		{"complete not json", withPayload(TypeComplete, []byte(`{"a":`)), ErrMalformed},
		{"device state empty not last", withPayload(TypeDeviceState, []byte{0, 0}), ErrRange},
		{"device state bool 2", withPayload(TypeDeviceState, []byte{2, 1, 7}), ErrMalformed},
		{"device state too big", withPayload(TypeDeviceState, []byte{1, 0x81, 0x80, 0x40}), ErrRange},
		{"device state length lies", withPayload(TypeDeviceState, []byte{1, 5, 7}), ErrTruncated},
		{"device state trailing", withPayload(TypeDeviceState, []byte{1, 1, 7, 8}), ErrMalformed},
		{"request zero pages", withPayload(TypePageRequest, (&PageRequest{Count: 0}).appendPayload(nil)), ErrRange},
		{"request too many pages", withPayload(TypePageRequest, (&PageRequest{Count: MaxRequestPages + 1}).appendPayload(nil)), ErrRange},
		{"request wraps", withPayload(TypePageRequest, (&PageRequest{Page: 1<<64 - 1, Count: 2}).appendPayload(nil)), ErrRange},
		{"reply bad kind", withPayload(TypePageReply, append((&PageReply{Page: 1}).appendPayload(nil)[:12], 3)), ErrMalformed},
		{"reply short data", withPayload(TypePageReply, append((&PageReply{Page: 1}).appendPayload(nil), make([]byte, 100)...)), ErrTruncated},
		{"reply zero with data", withPayload(TypePageReply, append((&PageReply{Page: 1, Kind: KindZero}).appendPayload(nil), 0)), ErrMalformed},
		{"runs beyond max pages", withPayload(TypeSwitchover, []byte{0, 0, 0, 0, 1, 0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10, 0}), ErrRange},
		{"runs bad block", withPayload(TypeSwitchover, []byte{0, 0, 0, 0, 1, 0x80, 0x10, 0, 0}), ErrRange},
		{"run count lies", withPayload(TypeSwitchover, []byte{0, 0, 0, 0, 9, 0, 0, 0}), ErrTruncated},
		{"resend of nothing", withPayload(TypeResend, []byte{0}), ErrRange},
		{"resend run count lies", withPayload(TypeResend, []byte{3, 0, 0, 0}), ErrTruncated},
		{"resend trailing", withPayload(TypeResend, []byte{1, 0, 4, 0, 0}), ErrMalformed},
		{"verdict fails more than it checked", withPayload(TypeVerdict, []byte{2, 3}), ErrRange},
		{"verdict truncated", withPayload(TypeVerdict, []byte{2}), ErrTruncated},
		{"batch no entries", batchPayload(0, 1, 0, 0, nil, 0), ErrRange},
		{"batch bad kind", batchPayload(0, 1, 1, 1, []byte{3}, 0), ErrMalformed},
		{"batch data without page", batchPayload(0, 1, 1, 1, []byte{0}, 0), ErrMalformed},
		{"batch page without entry", batchPayload(0, 1, 1, 1, []byte{byte(KindZero)}, PageSize), ErrMalformed},
		{"batch partial page", batchPayload(0, 1, 1, 1, []byte{0}, 100), ErrMalformed},
		{"batch fewer entries than said", batchPayload(0, 1, 2, 2, []byte{byte(KindZero), 0x80}, 0), ErrTruncated},
		{"batch more table than entries", batchPayload(0, 1, 1, 2, []byte{byte(KindZero), byte(KindZero)}, 0), ErrMalformed},
		{"batch table beyond payload", batchPayload(0, 1, 1, 50, []byte{byte(KindZero)}, 0), ErrMalformed},
		{"batch short ref", batchPayload(0, 1, 1, 5, []byte{byte(KindRef), 0, 0, 0, 0}, 0), ErrTruncated},
		{"batch page beyond max", batchPayload(0, 1, 1, 6, binary.AppendUvarint(nil, MaxPages<<2|uint64(KindZero)), 0), ErrRange},
		{"batch short header", withPayload(TypePageBatch, make([]byte, 15)), ErrTruncated},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Unmarshal(tc.frame)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v (message %+v), want %v", err, m, tc.want)
			}
		})
	}
}

func TestEncodeRefusesInvalid(t *testing.T) {
	unordered := new(PageBatch)
	unordered.Reset(0, 1)
	unordered.AddZero(5)
	unordered.AddZero(5)
	missingData := &PageBatch{Entries: []Entry{{Page: 1, Kind: KindData}}}
	tooMuch := new(PageBatch)
	tooMuch.Reset(0, 1)
	tooMuch.AddData(0, make([]byte, (MaxBatchDataPages+1)*PageSize)[:PageSize])
	for i := 1; i <= MaxBatchDataPages; i++ {
		tooMuch.AddData(uint64(i), page(uint64(i)))
	}
	tests := []struct {
		name string
		m    Message
		want error
	}{
		{"pages out of order", unordered, ErrMalformed},
		{"data entry without data", missingData, ErrMalformed},
		{"too many data pages", tooMuch, ErrRange},
		{"empty batch", new(PageBatch), ErrRange},
		{"overlapping runs", &Switchover{Pending: []Run{{0, 0, 10}, {0, 5, 1}}}, ErrMalformed},
		{"touching runs", &Switchover{Pending: []Run{{0, 0, 10}, {0, 10, 1}}}, ErrMalformed},
		{"zero-length run", &Switchover{Pending: []Run{{0, 3, 0}}}, ErrRange},
		{"resend of nothing", &Resend{}, ErrRange},
		{"resend unsorted", &Resend{Pages: []Run{{1, 0, 1}, {0, 5, 1}}}, ErrMalformed},
		{"verdict fails more than it checked", &Verdict{Checked: 2, Failed: 3}, ErrRange},
		{"reply data size", &PageReply{Kind: KindData, Data: make([]byte, 10)}, ErrMalformed},
		{"complete not json", &Complete{Figures: []byte("nope")}, ErrMalformed},
		{"device state empty not last", &DeviceState{}, ErrRange},
		{"device state too big", &DeviceState{Data: make([]byte, MaxDeviceState+1)}, ErrRange},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Marshal(tc.m); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestBatchBuilder(t *testing.T) {
	ram := make([]byte, 600*PageSize)
	var b PageBatch
	b.Reset(2, 4)
	n := 0
	for p := uint64(0); !b.Full(); p++ {
		b.AddData(p, ram[p*PageSize:(p+1)*PageSize])
		n++
	}
	if n != BatchTarget/PageSize {
		t.Fatalf("batch full after %d pages, want %d", n, BatchTarget/PageSize)
	}
	// Consecutive pages of one buffer become one slice: one iovec.
	if len(b.Data) != 1 || len(b.Data[0]) != n*PageSize || &b.Data[0][0] != &ram[0] {
		t.Fatalf("contiguous pages not merged: %d slices", len(b.Data))
	}
	if got := b.DataRun(0); got != n {
		t.Fatalf("DataRun(0) = %d, want %d", got, n)
	}
	// A page elsewhere in memory starts a new slice even if it follows in number.
	b.Reset(0, 1)
	b.AddData(0, ram[0:PageSize])
	b.AddData(1, ram[5*PageSize:6*PageSize])
	b.AddZero(2)
	b.AddData(3, ram[6*PageSize:7*PageSize])
	if len(b.Data) != 2 || b.DataRun(0) != 2 || b.DataRun(2) != 0 || b.DataRun(3) != 1 || b.DataPages() != 3 {
		t.Fatalf("data slices %d, runs %d %d %d", len(b.Data), b.DataRun(0), b.DataRun(2), b.DataRun(3))
	}
	if _, err := Marshal(&b); err != nil {
		t.Fatal(err)
	}
	// A batch of references fills on entries, not bytes of data.
	b.Reset(0, 1)
	for p := uint64(0); !b.Full(); p++ {
		b.AddRef(p, testRef(p))
	}
	if len(b.Entries) < 30000 {
		t.Fatalf("ref batch full after only %d entries", len(b.Entries))
	}
	if f, err := Marshal(&b); err != nil || len(f) > BatchTarget+64 {
		t.Fatalf("ref batch of %d bytes, err %v", len(f), err)
	}
}

func TestRunsHelpers(t *testing.T) {
	var runs []Run
	for _, p := range []uint64{3, 4, 5, 9, 10} {
		runs = AppendPage(runs, 0, p)
	}
	runs = AppendPage(runs, 2, 0)
	want := []Run{{0, 3, 3}, {0, 9, 2}, {2, 0, 1}}
	if !reflect.DeepEqual(runs, want) {
		t.Fatalf("AppendPage: %v, want %v", runs, want)
	}
	// Bits 0, 62..66 (across a word), 127, and 130 beyond npages=129.
	bm := []uint64{1 | 3<<62, 7 | 1<<63, 1 << 2}
	got := AppendBitmap(nil, 1, bm, 129)
	want = []Run{{1, 0, 1}, {1, 62, 5}, {1, 127, 1}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("AppendBitmap: %v, want %v", got, want)
	}
	if PageCount(got) != 7 {
		t.Fatalf("PageCount = %d, want 7", PageCount(got))
	}
}

func TestBulkConnRouting(t *testing.T) {
	const n = 3
	counts := make([]int, n)
	for p := range uint64(30 * stripePages) {
		c := BulkConn(0, p, n)
		if c != BulkConn(0, p, n) || c < 0 || c >= n {
			t.Fatalf("page %d → conn %d", p, c)
		}
		if p%stripePages != 0 && c != BulkConn(0, p-1, n) {
			t.Fatalf("page %d splits a stripe", p)
		}
		counts[c]++
	}
	for c, k := range counts {
		if k != 10*stripePages {
			t.Fatalf("conn %d carries %d pages, want %d", c, k, 10*stripePages)
		}
	}
	if BulkConn(1, 0, n) == BulkConn(0, 0, n) {
		t.Fatal("every block starts on the same connection")
	}
}
