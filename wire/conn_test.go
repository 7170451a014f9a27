package wire

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"reflect"
	"runtime"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { a.Close(); r.c.Close() })
	return a, r.c
}

func connPair(t testing.TB, role Role) (*Conn, *Conn) {
	a, b := tcpPair(t)
	return NewConn(a, role, 0), NewConn(b, role, 0)
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// readBatchData reads every page of batch b from c, one DataRun at a time,
// and returns them concatenated.
func readBatchData(t testing.TB, c *Conn, b *PageBatch) []byte {
	t.Helper()
	var out []byte
	for i := 0; i < len(b.Entries); {
		n := b.DataRun(i)
		if n == 0 {
			i++
			continue
		}
		buf := make([]byte, n*PageSize)
		if err := c.ReadData(buf); err != nil {
			t.Fatalf("read data of entries %d..%d: %v", i, i+n, err)
		}
		out = append(out, buf...)
		i += n
	}
	if c.DataLeft() != 0 {
		t.Fatalf("%d bytes of page data left", c.DataLeft())
	}
	return out
}

func TestConnRoundTrip(t *testing.T) {
	ctx := testCtx(t)
	pairs := map[Role][2]*Conn{}
	for _, r := range []Role{RoleControl, RoleBulk, RoleUrgent} {
		a, b := connPair(t, r)
		pairs[r] = [2]*Conn{a, b}
	}
	var sent uint64
	for _, m := range sampleMessages() {
		sent += uint64(len(mustMarshal(t, m)))
		p := pairs[m.Type().role()]
		errc := make(chan error, 1)
		go func() { errc <- p[0].WriteFrame(ctx, m) }()
		got, err := p[1].ReadFrame(ctx)
		if err != nil {
			t.Fatalf("%s: read: %v", m.Type(), err)
		}
		if err := <-errc; err != nil {
			t.Fatalf("%s: write: %v", m.Type(), err)
		}
		if b, ok := got.(*PageBatch); ok {
			if b.Data != nil {
				t.Fatalf("streamed batch has Data set")
			}
			data := readBatchData(t, p[1], b)
			c := comparable(t, b).(*PageBatch)
			if len(data) > 0 {
				c.Data = [][]byte{data}
			}
			got = c
		}
		if !reflect.DeepEqual(got, comparable(t, m)) {
			t.Fatalf("%s: got %+v, want %+v", m.Type(), got, m)
		}
	}
	var written, read uint64
	for _, p := range pairs {
		written += p[0].BytesWritten()
		read += p[1].BytesRead()
	}
	if written != sent || read != sent {
		t.Fatalf("counters: %d bytes written, %d read, %d in the frames", written, read, sent)
	}
}

// Pages not read by the caller are skipped, and scattered pages read one at
// a time land where they belong.
func TestConnBatchDataPartialAndScattered(t *testing.T) {
	ctx := testCtx(t)
	src, dst := connPair(t, RoleBulk)
	ram := make([]byte, 64*PageSize)
	for p := range uint64(64) {
		copy(ram[p*PageSize:], page(p+100))
	}
	var first, second PageBatch
	first.Reset(0, 1)
	for p := uint64(0); p < 64; p += 2 {
		first.AddData(p, ram[p*PageSize:(p+1)*PageSize])
	}
	second.Reset(0, 2)
	for p := uint64(1); p < 64; p += 2 {
		if p%3 == 0 {
			second.AddZero(p)
		} else {
			second.AddData(p, ram[p*PageSize:(p+1)*PageSize])
		}
	}
	go func() {
		_ = src.WriteFrame(ctx, &first)
		_ = src.WriteFrame(ctx, &second)
	}()
	m, err := dst.ReadFrame(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b := m.(*PageBatch)
	if b.Iteration != 1 || len(b.Entries) != 32 || b.DataRun(0) != 1 {
		t.Fatalf("first batch: iteration %d, %d entries, run %d", b.Iteration, len(b.Entries), b.DataRun(0))
	}
	one := make([]byte, PageSize)
	if err := dst.ReadData(one); err != nil || !bytes.Equal(one, page(100)) {
		t.Fatalf("first page: err %v, equal %v", err, bytes.Equal(one, page(100)))
	}
	if err := dst.ReadData(make([]byte, 100)); !errors.Is(err, ErrDataPending) {
		t.Fatalf("partial page read: got %v, want ErrDataPending", err)
	}
	// The 31 pages left are discarded by the next ReadFrame.
	m, err = dst.ReadFrame(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b = m.(*PageBatch)
	if b.Iteration != 2 {
		t.Fatalf("second batch iteration %d", b.Iteration)
	}
	out := make([]byte, len(ram))
	for _, e := range b.Entries {
		if e.Kind == KindData {
			if err := dst.ReadData(out[e.Page*PageSize : (e.Page+1)*PageSize]); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := dst.ReadData(one); !errors.Is(err, ErrDataPending) {
		t.Fatalf("read beyond batch: got %v, want ErrDataPending", err)
	}
	for p := uint64(1); p < 64; p += 2 {
		want := ram[p*PageSize : (p+1)*PageSize]
		if p%3 == 0 {
			want = make([]byte, PageSize) // zero entry: nothing written
		}
		if !bytes.Equal(out[p*PageSize:(p+1)*PageSize], want) {
			t.Fatalf("page %d differs", p)
		}
	}
}

func TestReadFrameRefusesOversizeBeforePayload(t *testing.T) {
	ctx := testCtx(t)
	a, b := tcpPair(t)
	c := NewConn(b, RoleControl, 0)
	// Only the header is sent: a reader that waited for the payload would block.
	if _, err := a.Write(withPayload(TypeHello, nil)[:4]); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Write([]byte{0, 0, 0, 0x10}); err != nil { // 256 MiB
		t.Fatal(err)
	}
	_, err := c.ReadFrame(ctx)
	if !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("got %v, want ErrFrameTooLarge", err)
	}
	// The error sticks: the stream is no longer at a frame boundary.
	if _, err2 := c.ReadFrame(ctx); !errors.Is(err2, ErrFrameTooLarge) {
		t.Fatalf("second read: got %v", err2)
	}
}

// A header announcing a big (allowed) payload that never comes must not make
// the reader allocate the announced size.
func TestReadFrameDoesNotTrustLength(t *testing.T) {
	ctx := testCtx(t)
	a, b := tcpPair(t)
	c := NewConn(b, RoleControl, 0)
	f := withPayload(TypeComplete, nil)
	le.PutUint32(f[4:], maxControlFrame) // 64 MiB announced
	go func() {
		a.Write(append(f, `{"a":`...))
		a.Close()
	}()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := c.ReadFrame(ctx)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrTruncated) || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("got %v, want ErrTruncated", err)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 8<<20 {
		t.Fatalf("allocated %d bytes for a 5-byte payload", grew)
	}
}

func TestReadFrameCancelUnblocks(t *testing.T) {
	a, b := connPair(t, RoleControl)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := b.ReadFrame(ctx)
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("cancel took %v", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ReadFrame still blocked 5 s after cancel")
	}
	// Nothing of a frame had arrived, so the connection still works.
	ctx2 := testCtx(t)
	go a.WriteFrame(ctx2, &Abort{Reason: "after cancel"})
	m, err := b.ReadFrame(ctx2)
	if err != nil {
		t.Fatalf("read after cancel: %v", err)
	}
	if ab, ok := m.(*Abort); !ok || ab.Reason != "after cancel" {
		t.Fatalf("read after cancel: %+v", m)
	}
}

func TestReadFrameDeadline(t *testing.T) {
	_, b := connPair(t, RoleUrgent)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := b.ReadFrame(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d < 40*time.Millisecond || d > 2*time.Second {
		t.Fatalf("returned after %v", d)
	}
}

func TestReadFrameCancelMidFrameSticks(t *testing.T) {
	a, b := tcpPair(t)
	c := NewConn(b, RoleControl, 0)
	f := mustMarshal(t, &Abort{Reason: "a reason long enough"})
	if _, err := a.Write(f[:12]); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := c.ReadFrame(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want DeadlineExceeded", err)
	}
	if _, err := a.Write(f[12:]); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ReadFrame(testCtx(t)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("read after a broken frame: got %v, want the sticky error", err)
	}
}

func TestReadDataCancelUnblocks(t *testing.T) {
	for _, vec := range []bool{false, true} {
		a, b := tcpPair(t)
		c := NewConn(b, RoleBulk, 0)
		var batch PageBatch
		batch.Reset(0, 1)
		for p := range uint64(10) {
			batch.AddData(2*p, page(p))
		}
		f := mustMarshal(t, &batch)
		if _, err := a.Write(f[:len(f)-PageSize]); err != nil { // last page withheld
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		if _, err := c.ReadFrame(ctx); err != nil {
			t.Fatal(err)
		}
		if err := c.ReadData(make([]byte, PageSize)); err != nil {
			t.Fatal(err)
		}
		time.AfterFunc(50*time.Millisecond, cancel)
		var err error
		if vec { // big enough for the readv path
			dsts := make([][]byte, 9)
			for i := range dsts {
				dsts[i] = make([]byte, PageSize)
			}
			err = c.ReadDataVec(dsts)
		} else {
			err = c.ReadData(make([]byte, 9*PageSize))
		}
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("vec=%v: got %v, want context.Canceled", vec, err)
		}
		cancel()
	}
}

func TestWriteFrameCancelUnblocks(t *testing.T) {
	a, _ := tcpPair(t) // the peer never reads
	c := NewConn(a, RoleBulk, 0)
	var batch PageBatch
	ram := make([]byte, 256*PageSize)
	batch.Reset(0, 1)
	for p := range uint64(256) {
		batch.AddData(p, ram[p*PageSize:(p+1)*PageSize])
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	var err error
	for i := 0; i < 1000 && err == nil; i++ { // 1 GiB: far beyond socket buffers
		err = c.WriteFrame(ctx, &batch)
	}
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	// If the cancel cut a frame, the error sticks; if it came between frames,
	// the next write blocks again. Either way nothing more gets through.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel2()
	if err2 := c.WriteFrame(ctx2, &batch); !errors.Is(err2, context.Canceled) && !errors.Is(err2, context.DeadlineExceeded) {
		t.Fatalf("write after cancel: got %v", err2)
	}
}

func TestConnRoleEnforced(t *testing.T) {
	ctx := testCtx(t)
	a, b := tcpPair(t)
	ctrl := NewConn(b, RoleControl, 0)
	if err := NewConn(a, RoleControl, 0).WriteFrame(ctx, mixedBatch()); !errors.Is(err, ErrUnexpected) {
		t.Fatalf("writing a batch on a control conn: got %v", err)
	}
	if _, err := a.Write(mustMarshal(t, mixedBatch())); err != nil {
		t.Fatal(err)
	}
	if _, err := ctrl.ReadFrame(ctx); !errors.Is(err, ErrUnexpected) {
		t.Fatalf("reading a batch on a control conn: got %v, want ErrUnexpected", err)
	}
}

func TestConnGeometry(t *testing.T) {
	ctx := testCtx(t)
	h := testHello() // ram0: 262144 pages, pc.rom: 32 pages, 3 bulk conns
	tests := []struct {
		role Role
		m    Message
		ok   bool
	}{
		{RoleBulk, func() Message { b := new(PageBatch); b.Reset(1, 1); b.AddZero(31); return b }(), true},
		{RoleBulk, func() Message { b := new(PageBatch); b.Reset(1, 1); b.AddZero(32); return b }(), false},
		{RoleBulk, func() Message { b := new(PageBatch); b.Reset(2, 1); b.AddZero(0); return b }(), false},
		{RoleUrgent, &PageRequest{Block: 0, Page: 262140, Count: 4}, true},
		{RoleUrgent, &PageRequest{Block: 0, Page: 262140, Count: 5}, false},
		{RoleUrgent, &PageReply{Block: 1, Page: 32, Kind: KindZero}, false},
		{RoleControl, &Switchover{Pending: []Run{{1, 0, 32}}}, true},
		{RoleControl, &Switchover{Pending: []Run{{0, 0, 1}, {1, 1, 32}}}, false},
		{RoleControl, &Resend{Pages: []Run{{0, 262143, 1}, {1, 0, 32}}}, true},
		{RoleControl, &Resend{Pages: []Run{{0, 262143, 2}}}, false},
		{RoleControl, &Resend{Pages: []Run{{2, 0, 1}}}, false},
		{RoleControl, &IterationEnd{Iteration: 1, Batches: []uint64{1, 2, 3}}, true},
		{RoleControl, &IterationEnd{Iteration: 1, Batches: []uint64{1, 2}}, false},
	}
	for i, tc := range tests {
		a, b := connPair(t, tc.role)
		b.SetGeometry(h)
		go a.WriteFrame(ctx, tc.m)
		_, err := b.ReadFrame(ctx)
		if tc.ok && err != nil {
			t.Errorf("case %d (%s): %v", i, tc.m.Type(), err)
		}
		if !tc.ok && !errors.Is(err, ErrRange) {
			t.Errorf("case %d (%s): got %v, want ErrRange", i, tc.m.Type(), err)
		}
	}
}

func TestReadFrameEOF(t *testing.T) {
	a, b := connPair(t, RoleControl)
	a.Close()
	if _, err := b.ReadFrame(testCtx(t)); !errors.Is(err, io.EOF) || errors.Is(err, ErrTruncated) {
		t.Fatalf("clean close: got %v, want io.EOF", err)
	}
}

func TestConcurrentWriters(t *testing.T) {
	ctx := testCtx(t)
	a, b := connPair(t, RoleUrgent)
	const writers, each = 4, 200
	for w := range writers {
		go func() {
			for i := range each {
				p := uint64(w*each + i)
				if err := a.WriteFrame(ctx, &PageReply{Page: p, Kind: KindData, Data: page(p)}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	seen := map[uint64]bool{}
	for range writers * each {
		m, err := b.ReadFrame(ctx)
		if err != nil {
			t.Fatal(err)
		}
		r := m.(*PageReply)
		if !bytes.Equal(r.Data, page(r.Page)) || seen[r.Page] {
			t.Fatalf("reply for page %d garbled or repeated", r.Page)
		}
		seen[r.Page] = true
	}
}

// ReadDataVec puts scattered pages in place, over a socket (readv) and over
// a plain stream (through the buffer), whatever part was already buffered.
func TestReadDataVec(t *testing.T) {
	ctx := testCtx(t)
	const n = 200
	ram := make([]byte, 2*n*PageSize)
	for p := range uint64(2 * n) {
		copy(ram[p*PageSize:], page(p))
	}
	var b PageBatch
	b.Reset(0, 1)
	for p := uint64(0); p < 2*n; p += 2 {
		if p == 10 {
			b.AddZero(p)
			continue
		}
		b.AddData(p, ram[p*PageSize:(p+1)*PageSize])
		if p == 20 { // and one run of two
			b.AddData(p+1, ram[(p+1)*PageSize:(p+2)*PageSize])
		}
	}
	frame := mustMarshal(t, &b)
	check := func(t *testing.T, c *Conn) {
		m, err := c.ReadFrame(ctx)
		if err != nil {
			t.Fatal(err)
		}
		got := m.(*PageBatch)
		out := make([]byte, len(ram))
		var dsts [][]byte
		for i := 0; i < len(got.Entries); {
			k := got.DataRun(i)
			if k == 0 {
				i++
				continue
			}
			p := got.Entries[i].Page
			dsts = append(dsts, out[p*PageSize:(p+uint64(k))*PageSize])
			i += k
		}
		// Ask for all but the last page first, then the last one.
		last := dsts[len(dsts)-1]
		if err := c.ReadDataVec(dsts[:len(dsts)-1]); err != nil {
			t.Fatal(err)
		}
		if err := c.ReadDataVec([][]byte{last, last}); !errors.Is(err, ErrDataPending) {
			t.Fatalf("reading past the batch: got %v", err)
		}
		if err := c.ReadDataVec([][]byte{last}); err != nil {
			t.Fatal(err)
		}
		for _, e := range got.Entries {
			want := make([]byte, PageSize)
			if e.Kind == KindData {
				want = ram[e.Page*PageSize : (e.Page+1)*PageSize]
			}
			if !bytes.Equal(out[e.Page*PageSize:(e.Page+1)*PageSize], want) {
				t.Fatalf("page %d (%s) differs", e.Page, e.Kind)
			}
		}
	}
	t.Run("socket", func(t *testing.T) {
		a, c := tcpPair(t)
		go func() {
			a.Write(frame[:5000]) // header, table and part of a page arrive first
			time.Sleep(20 * time.Millisecond)
			a.Write(frame[5000:])
		}()
		check(t, NewConn(c, RoleBulk, 0))
	})
	t.Run("stream", func(t *testing.T) {
		check(t, NewConn(&streamConn{r: &chunkReader{b: frame, n: 3000}}, RoleBulk, 0))
	})
}

// A context's watch stays registered across operations; switching contexts
// must move it, so cancelling an old context never disturbs a newer one.
func TestContextWatchFollowsContext(t *testing.T) {
	a, b := connPair(t, RoleControl)
	wctx := testCtx(t)
	ctxA, cancelA := context.WithCancel(context.Background())
	defer cancelA()
	for i := range 3 {
		go a.WriteFrame(wctx, &Progress{Iteration: uint32(i)})
		if _, err := b.ReadFrame(ctxA); err != nil {
			t.Fatal(err)
		}
	}
	ctxB, cancelB := context.WithCancel(context.Background())
	defer cancelB()
	got := make(chan error, 1)
	go func() {
		m, err := b.ReadFrame(ctxB)
		if err == nil && m.(*Progress).Iteration != 7 {
			err = errors.New("wrong frame")
		}
		got <- err
	}()
	time.Sleep(50 * time.Millisecond)
	cancelA() // the stale context: must not unblock the read under ctxB
	select {
	case err := <-got:
		t.Fatalf("read under ctxB returned when ctxA was cancelled: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	if err := a.WriteFrame(wctx, &Progress{Iteration: 7}); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatalf("read under ctxB: %v", err)
	}
	go func() {
		_, err := b.ReadFrame(ctxB)
		got <- err
	}()
	time.Sleep(50 * time.Millisecond)
	cancelB()
	select {
	case err := <-got:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("read under ctxB not unblocked by its cancel")
	}
}

// Unacked counts what the peer has not taken yet: bytes that do not fit
// its receive buffer stay in ours until it reads, and none are left once
// it has read everything.
func TestConnUnacked(t *testing.T) {
	a, b := tcpPair(t)
	c := NewConn(a, RoleBulk, 0)
	if n, err := c.Unacked(); err != nil || n != 0 {
		t.Fatalf("unacked on a fresh connection: %d %v", n, err)
	}
	const total = 64 << 20 // beyond any socket buffer pair
	buf := make([]byte, 1<<20)
	written := make(chan error, 1)
	go func() {
		var err error
		for i := 0; i < total/len(buf) && err == nil; i++ {
			_, err = a.Write(buf)
		}
		written <- err
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, err := c.Unacked()
		if err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("unacked stayed 0 with the peer not reading")
		}
		time.Sleep(time.Millisecond)
	}
	if _, err := io.CopyN(io.Discard, b, total); err != nil {
		t.Fatal(err)
	}
	if err := <-written; err != nil {
		t.Fatal(err)
	}
	for {
		n, err := c.Unacked()
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("unacked %d after the peer read everything", n)
		}
		time.Sleep(time.Millisecond)
	}
}

// stepPacer grants pieces of the sizes in steps, in turn, and counts what
// it granted; failAt > 0 fails the grant once that many bytes went.
type stepPacer struct {
	steps   []int
	i       int
	granted int
	failAt  int
}

func (p *stepPacer) Pace(ctx context.Context, n int) (int, error) {
	if p.failAt > 0 && p.granted >= p.failAt {
		return 0, context.Canceled
	}
	k := min(n, p.steps[p.i%len(p.steps)])
	p.i++
	p.granted += k
	return k, nil
}

// A paced connection writes each frame in the pieces its pacer grants
// (buffers split anywhere, header and table included), and the peer reads
// the same frames; the pacer is asked for exactly the bytes written.
func TestConnPaced(t *testing.T) {
	ctx := testCtx(t)
	pairs := map[Role][2]*Conn{}
	pacers := map[Role]*stepPacer{}
	for _, r := range []Role{RoleControl, RoleBulk, RoleUrgent} {
		a, b := connPair(t, r)
		pairs[r] = [2]*Conn{a, b}
		pacers[r] = &stepPacer{steps: []int{1, 7, 4096, 1000, 1 << 16}}
		a.SetPacer(pacers[r])
	}
	for _, m := range sampleMessages() {
		p := pairs[m.Type().role()]
		errc := make(chan error, 1)
		go func() { errc <- p[0].WriteFrame(ctx, m) }()
		got, err := p[1].ReadFrame(ctx)
		if err != nil {
			t.Fatalf("%s: read: %v", m.Type(), err)
		}
		if err := <-errc; err != nil {
			t.Fatalf("%s: write: %v", m.Type(), err)
		}
		if b, ok := got.(*PageBatch); ok {
			data := readBatchData(t, p[1], b)
			c := comparable(t, b).(*PageBatch)
			if len(data) > 0 {
				c.Data = [][]byte{data}
			}
			got = c
		}
		if !reflect.DeepEqual(got, comparable(t, m)) {
			t.Fatalf("%s: got %+v, want %+v", m.Type(), got, m)
		}
	}
	for r, p := range pairs {
		if w := p[0].BytesWritten(); uint64(pacers[r].granted) != w {
			t.Errorf("%v: pacer granted %d bytes, %d written", r, pacers[r].granted, w)
		}
	}
	// Without a pacer again: one write per frame.
	a, b := pairs[RoleBulk][0], pairs[RoleBulk][1]
	a.SetPacer(nil)
	before := pacers[RoleBulk].i
	var batch PageBatch
	batch.Reset(0, 1)
	batch.AddData(3, page(3))
	go func() { _ = a.WriteFrame(ctx, &batch) }()
	if m, err := b.ReadFrame(ctx); err != nil || !bytes.Equal(readBatchData(t, b, m.(*PageBatch)), page(3)) {
		t.Fatalf("unpaced batch: %v", err)
	}
	if pacers[RoleBulk].i != before {
		t.Error("pacer asked after SetPacer(nil)")
	}
}

// A pacer failing mid-frame leaves the stream cut: the connection's error
// is sticky, as for any write that failed part-way.
func TestConnPacedFailureSticks(t *testing.T) {
	ctx := testCtx(t)
	a, b := connPair(t, RoleBulk)
	go func() { _, _ = io.Copy(io.Discard, b.NetConn()) }()
	a.SetPacer(&stepPacer{steps: []int{4096}, failAt: 8192})
	var batch PageBatch
	batch.Reset(0, 1)
	for p := range uint64(8) {
		batch.AddData(p, page(p))
	}
	if err := a.WriteFrame(ctx, &batch); !errors.Is(err, context.Canceled) {
		t.Fatalf("write with a failing pacer: %v", err)
	}
	a.SetPacer(nil)
	if err := a.WriteFrame(ctx, &batch); !errors.Is(err, context.Canceled) {
		t.Fatalf("write after a cut frame: %v, want the first error again", err)
	}
}

// SetNotSentLowat takes on a TCP connection, and is a no-op on others.
func TestConnSetNotSentLowat(t *testing.T) {
	a, _ := tcpPair(t)
	if err := NewConn(a, RoleBulk, 0).SetNotSentLowat(128 << 10); err != nil {
		t.Fatalf("TCP: %v", err)
	}
	p, q := net.Pipe()
	defer p.Close()
	defer q.Close()
	if err := NewConn(p, RoleBulk, 0).SetNotSentLowat(128 << 10); err != nil {
		t.Fatalf("pipe: %v", err)
	}
}
