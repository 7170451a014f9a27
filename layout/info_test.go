package layout

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

// TestJudge: a cached layout is judged stale when it predates the pool's
// last load, while the pool loads, or when it names far less than the
// pool's clean pages; otherwise, and when the server gave no figures, not.
func TestJudge(t *testing.T) {
	for name, c := range map[string]struct {
		info  Info
		named uint64
		want  string
	}{
		// The case of a TCG MariaDB guest: the agent's first layout was
		// taken at MariaDB's start, before the pool loaded.
		"before the load": {Info{Cached: true, Age: 100 * time.Second, LoadAge: 40 * time.Second, PoolPages: 180_000, DirtyPages: 3_000}, 65_000, "before the buffer pool's last load"},
		"loading":         {Info{Cached: true, Age: time.Second, Loading: true}, 10, "is loading"},
		"far less":        {Info{Cached: true, Age: 30 * time.Second, LoadAge: time.Hour, PoolPages: 180_000, DirtyPages: 3_000}, 65_000, "names 65000 pages, the buffer pool holds 177000 clean"},
		"good":            {Info{Cached: true, Age: 30 * time.Second, LoadAge: time.Hour, PoolPages: 180_000, DirtyPages: 3_000}, 170_000, ""},
		"half is enough":  {Info{Age: time.Second, PoolPages: 100_000}, 50_000, ""},
		"no figures":      {Info{Cached: true, Age: time.Hour}, 10, ""},
		"dirty above all": {Info{PoolPages: 10, DirtyPages: 20}, 0, ""},
	} {
		got := Judge(c.info, c.named)
		if c.want == "" && got != "" || c.want != "" && !strings.Contains(got, c.want) {
			t.Errorf("%s: Judge = %q, want %q", name, got, c.want)
		}
	}
}

// TestFetchInfo: a server with a Pool answers the info request with the
// layout's age, whether it was cached, and the pool's figures; a request
// without the info flag gets the plain answer an old client expects.
func TestFetchInfo(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(func(context.Context) (*Layout, error) {
		return &Layout{Generation: 7, Disks: disks("vda"), Runs: []Run{{GuestPage: 1, Pages: 4}}}, nil
	})
	srv.Pool = func(context.Context) (Info, error) {
		return Info{PoolPages: 400, DirtyPages: 40, LoadAge: 90 * time.Second}, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go srv.Serve(ctx, ln)
	addr := ln.Addr().String()
	l, info, err := FetchInfo(ctx, addr, true)
	if err != nil || l.Generation != 7 || info == nil || info.Cached || info.PoolPages != 400 || info.CleanPages() != 360 || info.LoadAge != 90*time.Second {
		t.Fatalf("fresh: %+v %+v %v", l, info, err)
	}
	time.Sleep(2 * time.Millisecond)
	l, info, err = FetchInfo(ctx, addr, false)
	if err != nil || l.Generation != 7 || info == nil || !info.Cached || info.Age <= 0 {
		t.Fatalf("cached: %+v %+v %v", l, info, err)
	}
	if l, err := FetchWith(ctx, addr, false); err != nil || l.Generation != 7 {
		t.Fatalf("without info: %+v %v", l, err)
	}
}

// TestRequestInfoOldServer: a server that predates Info ignores the flag
// and answers status 0; the client takes the layout with no Info.
func TestRequestInfoOldServer(t *testing.T) {
	b, err := (&Layout{Generation: 3}).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var resp bytes.Buffer
	resp.Write(frame(statusOK, b))
	conn := &fakeConn{r: &resp}
	l, info, err := RequestInfo(context.Background(), conn, false)
	if err != nil || l.Generation != 3 || info != nil {
		t.Fatalf("%+v %+v %v", l, info, err)
	}
	if got := conn.w.Bytes(); len(got) != reqSize || got[len(reqMagic)+1] != flagInfo {
		t.Fatalf("request %q", got)
	}
	// An info answer to a request without the flag is refused.
	resp.Reset()
	resp.Write(frame(statusInfo, append([]byte{0}, b...)))
	if _, err := Request(context.Background(), &fakeConn{r: &resp}, false); !errors.Is(err, ErrMalformed) {
		t.Fatalf("unasked info: %v", err)
	}
}

type fakeConn struct {
	r *bytes.Buffer
	w bytes.Buffer
}

func (c *fakeConn) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c *fakeConn) Write(p []byte) (int, error) { return c.w.Write(p) }

// FuzzDecodeResponse: any payload decodes or is refused; what decodes
// encodes back to an Info with the same figures.
func FuzzDecodeResponse(f *testing.F) {
	b, _ := (&Layout{Generation: 1, Disks: disks("vda"), Runs: []Run{{GuestPage: 2, Pages: 4}}}).MarshalBinary()
	ib := Info{Cached: true, Age: time.Second, PoolPages: 5, DirtyPages: 1, LoadAge: time.Minute}.marshal()
	f.Add(append(append(binary.AppendUvarint(nil, uint64(len(ib))), ib...), b...))
	f.Add([]byte{0x7f, 1})
	f.Fuzz(func(t *testing.T, payload []byte) {
		l, info, err := decodeResponse(statusInfo, payload)
		if err != nil {
			return
		}
		if l == nil || info == nil {
			t.Fatal("decoded without a layout or info")
		}
		again, err := unmarshalInfo(info.marshal())
		if err != nil || again != *info {
			t.Fatalf("info %+v re-encoded as %+v, %v", *info, again, err)
		}
	})
}
