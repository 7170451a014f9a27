package wire

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t testing.TB, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// leaf issues a certificate for 127.0.0.1 usable by both ends.
func (ca *testCA) leaf(t testing.TB, name string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func (ca *testCA) serverConfig(t testing.TB) *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{ca.leaf(t, "dest")},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    ca.pool,
		MinVersion:   tls.VersionTLS13,
	}
}

func (ca *testCA) clientConfig(t testing.TB) *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{ca.leaf(t, "source")},
		RootCAs:      ca.pool,
		MinVersion:   tls.VersionTLS13,
	}
}

// tlsListen listens with mutual TLS and counts the Hellos that reach decide.
func tlsListen(t *testing.T, ca *testCA) (*Listener, *rejections, *atomic.Int32, chan accepted) {
	t.Helper()
	l, rej := listen(t)
	l.TLS = ca.serverConfig(t)
	l.HandshakeTimeout = 2 * time.Second
	var hellos atomic.Int32
	acc := acceptAsync(testCtx(t), l, func(h *Hello) HelloAck {
		hellos.Add(1)
		return HelloAck{Accepted: true}
	})
	return l, rej, &hellos, acc
}

func TestTLSSession(t *testing.T) {
	ca := newTestCA(t, "ca")
	l, _, hellos, acc := tlsListen(t, ca)
	src, err := Dial(testCtx(t), l.Addr().String(), sessionHello(), WithTLS(ca.clientConfig(t)))
	if err != nil {
		t.Fatalf("dial with mutual TLS: %v", err)
	}
	defer src.Close()
	dst := mustAccept(t, acc)
	if hellos.Load() != 1 {
		t.Fatalf("%d hellos reached decide, want 1", hellos.Load())
	}
	for _, c := range dst.conns() {
		if got := PeerCertificateSubject(c); got != "CN=source" {
			t.Fatalf("%s conn %d: peer certificate %q, want CN=source", c.Role(), c.Index(), got)
		}
	}
	for _, c := range src.conns() {
		if got := PeerCertificateSubject(c); got != "CN=dest" {
			t.Fatalf("source %s conn: peer certificate %q, want CN=dest", c.Role(), got)
		}
	}
	// Frames flow over TLS, including page data on a bulk connection.
	ctx := testCtx(t)
	page := bytes.Repeat([]byte{0xa5}, PageSize)
	b := &PageBatch{Iteration: 1}
	b.AddData(7, page)
	if err := src.Bulk[1].WriteFrame(ctx, b); err != nil {
		t.Fatal(err)
	}
	m, err := dst.Bulk[1].ReadFrame(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := readBatchData(t, dst.Bulk[1], m.(*PageBatch))
	if !bytes.Equal(got, page) {
		t.Fatal("page data changed over TLS")
	}
}

// TestTLSRefusesPeers: a plain peer, one without a certificate, one whose
// certificate another CA signed, garbage, and a replay of a recorded good
// session are all turned away before a Hello reaches decide; a good peer
// afterwards still gets through.
func TestTLSRefusesPeers(t *testing.T) {
	ca := newTestCA(t, "ca")
	other := newTestCA(t, "other-ca")
	l, rej, hellos, acc := tlsListen(t, ca)
	addr := l.Addr().String()

	// Record a good session's client → server bytes through a proxy, on a
	// second listener that shares the CA (the replay target is l).
	rec := recordSession(t, ca)

	noCert := ca.clientConfig(t)
	noCert.Certificates = nil
	cases := []struct {
		name string
		want string // in the listener's error
		dial func(ctx context.Context) error
	}{
		{"plain", "does not look like a TLS handshake", func(ctx context.Context) error {
			s, err := Dial(ctx, addr, sessionHello())
			if err == nil {
				s.Close()
			}
			return err
		}},
		{"no certificate", "didn't provide a certificate", func(ctx context.Context) error {
			s, err := Dial(ctx, addr, sessionHello(), WithTLS(noCert))
			if err == nil {
				s.Close()
			}
			return err
		}},
		{"other CA", "unknown authority", func(ctx context.Context) error {
			cfg := other.clientConfig(t)
			cfg.RootCAs = ca.pool // trusts the server; the server must not trust it
			// crypto/tls would withhold a certificate the server's CA list
			// does not name; an attacker would not, so force it out.
			leaf := cfg.Certificates[0]
			cfg.Certificates = nil
			cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &leaf, nil }
			s, err := Dial(ctx, addr, sessionHello(), WithTLS(cfg))
			if err == nil {
				s.Close()
			}
			return err
		}},
		{"garbage", "does not look like a TLS handshake", func(ctx context.Context) error {
			return rawExchange(ctx, addr, bytes.Repeat([]byte("GET / HTTP/1.1\r\n"), 64))
		}},
		{"replay", "bad record MAC", func(ctx context.Context) error {
			return rawExchange(ctx, addr, rec)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			n := rej.count()
			ctx, cancel := context.WithTimeout(testCtx(t), 5*time.Second)
			defer cancel()
			if err := tc.dial(ctx); err == nil {
				t.Fatal("session opened")
			} else {
				t.Logf("dialer: %v", err)
			}
			waitFor(t, func() bool { return rej.count() > n })
			if err := rej.last(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("listener rejected with %v, want an error containing %q", err, tc.want)
			}
			if hellos.Load() != 0 {
				t.Fatalf("a Hello reached decide")
			}
			select {
			case a := <-acc:
				t.Fatalf("Accept returned %v, %v", a.s, a.err)
			default:
			}
		})
	}
	src, err := Dial(testCtx(t), addr, sessionHello(), WithTLS(ca.clientConfig(t)))
	if err != nil {
		t.Fatalf("good peer after refusals: %v", err)
	}
	src.Close()
	mustAccept(t, acc).Close()
}

// rawExchange writes b on a new connection and reads until the peer closes.
// It returns nil only if the peer answered with a dmig preamble.
func rawExchange(ctx context.Context, addr string, b []byte) error {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer nc.Close()
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	nc.Write(b)
	resp, err := io.ReadAll(nc)
	if bytes.Contains(resp, []byte(magic)) {
		return nil
	}
	if err == nil {
		err = errors.New("peer closed")
	}
	return err
}

// recordSession runs a good session through a recording proxy and returns
// what the source sent on its control connection.
func recordSession(t *testing.T, ca *testCA) []byte {
	t.Helper()
	l, _ := listen(t)
	l.TLS = ca.serverConfig(t)
	acc := acceptAsync(testCtx(t), l, nil)
	px, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer px.Close()
	var mu sync.Mutex
	var first []byte
	var firstDone = make(chan struct{})
	go func() {
		for i := 0; ; i++ {
			c, err := px.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", l.Addr().String())
			if err != nil {
				c.Close()
				return
			}
			go func() { io.Copy(c, up); c.Close() }()
			go func(i int) {
				var buf bytes.Buffer
				io.Copy(io.MultiWriter(up, &buf), c)
				up.Close()
				if i == 0 {
					mu.Lock()
					first = buf.Bytes()
					mu.Unlock()
					close(firstDone)
				}
			}(i)
		}
	}()
	h := sessionHello()
	h.BulkConns = 1
	src, err := Dial(testCtx(t), px.Addr().String(), h, WithTLS(ca.clientConfig(t)))
	if err != nil {
		t.Fatalf("dial through proxy: %v", err)
	}
	a := <-acc
	if a.err != nil {
		t.Fatal(a.err)
	}
	if err := src.Control.WriteFrame(testCtx(t), &Abort{Reason: "recorded"}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.s.Control.ReadFrame(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	src.Close()
	a.s.Close()
	<-firstDone
	mu.Lock()
	defer mu.Unlock()
	if len(first) < 200 {
		t.Fatalf("recorded only %d bytes", len(first))
	}
	return first
}

func (r *rejections) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.errs)
}

func (r *rejections) last() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.errs) == 0 {
		return nil
	}
	return r.errs[len(r.errs)-1]
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestTLSClientVerifiesServer: a source refuses a destination whose
// certificate its CA did not sign, before it sends a Hello.
func TestTLSClientVerifiesServer(t *testing.T) {
	ca := newTestCA(t, "ca")
	other := newTestCA(t, "other-ca")
	l, _, hellos, _ := tlsListen(t, other)
	cfg := ca.clientConfig(t)
	_, err := Dial(testCtx(t), l.Addr().String(), sessionHello(), WithTLS(cfg))
	var uerr x509.UnknownAuthorityError
	if !errors.As(err, &uerr) {
		t.Fatalf("dial a server of another CA: %v, want x509.UnknownAuthorityError", err)
	}
	if hellos.Load() != 0 {
		t.Fatal("the Hello reached an unverified server")
	}
}

// TestDialTimeout: a destination that accepts TCP and never answers makes
// Dial fail with ErrTimeout once WithTimeout expires, not hang.
func TestDialTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	for _, opts := range [][]DialOption{
		{WithTimeout(200 * time.Millisecond)},
		{WithTimeout(200 * time.Millisecond), WithTLS(newTestCA(t, "ca").clientConfig(t))},
	} {
		start := time.Now()
		_, err = Dial(testCtx(t), ln.Addr().String(), sessionHello(), opts...)
		if !errors.Is(err, ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("dial a silent peer: %v, want ErrTimeout", err)
		}
		if d := time.Since(start); d < 200*time.Millisecond || d > 2*time.Second {
			t.Fatalf("dial gave up after %v, want about 200ms", d)
		}
	}
	// A session set up in time is not bounded afterwards.
	l, _ := listen(t)
	acc := acceptAsync(testCtx(t), l, nil)
	s, err := Dial(testCtx(t), l.Addr().String(), sessionHello(), WithTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	dst := mustAccept(t, acc)
	time.Sleep(1100 * time.Millisecond)
	if err := s.Control.WriteFrame(testCtx(t), &Abort{Reason: "late"}); err != nil {
		t.Fatalf("write after the dial timeout passed: %v", err)
	}
	if _, err := dst.Control.ReadFrame(testCtx(t)); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkSessionTLS is the cost of TLS on bulk page data: 256 MiB over
// one bulk connection on loopback, plain and with mutual TLS, as MB/s and
// the TLS/plain ratio.
func BenchmarkSessionTLS(b *testing.B) {
	const total = 256 << 20
	ram := make([]byte, BatchTarget)
	for i := range ram {
		ram[i] = byte(i * 7)
	}
	ca := newTestCA(b, "ca")
	run := func(b *testing.B, server, client *tls.Config) time.Duration {
		ctx := context.Background()
		l, err := Listen(ctx, "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		defer l.Close()
		l.TLS = server
		acc := make(chan accepted, 1)
		go func() { s, err := l.Accept(ctx, nil); acc <- accepted{s, err} }()
		h := sessionHello()
		h.BulkConns = 1
		h.Blocks = []Block{{Name: "ram", Size: 1 << 30}}
		src, err := Dial(ctx, l.Addr().String(), h, WithTLS(client))
		if err != nil {
			b.Fatal(err)
		}
		defer src.Close()
		a := <-acc
		if a.err != nil {
			b.Fatal(a.err)
		}
		defer a.s.Close()
		done := make(chan error, 1)
		go func() {
			buf := make([]byte, BatchTarget)
			for got := 0; got < total; {
				m, err := a.s.Bulk[0].ReadFrame(ctx)
				if err != nil {
					done <- err
					return
				}
				n := len(m.(*PageBatch).Entries) * PageSize
				if err := a.s.Bulk[0].ReadData(buf[:n]); err != nil {
					done <- err
					return
				}
				got += n
			}
			done <- nil
		}()
		start := time.Now()
		var batch PageBatch
		for sent, p := 0, uint64(0); sent < total; sent += len(ram) {
			batch.Reset(0, 1)
			for off := 0; off < len(ram); off += PageSize {
				batch.AddData(p, ram[off:off+PageSize])
				p++
			}
			if err := src.Bulk[0].WriteFrame(ctx, &batch); err != nil {
				b.Fatal(err)
			}
		}
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	var plain, secure time.Duration
	for b.Loop() {
		plain += run(b, nil, nil)
		secure += run(b, ca.serverConfig(b), ca.clientConfig(b))
	}
	b.ReportMetric(float64(total)*float64(b.N)/plain.Seconds()/1e6, "plain-MB/s")
	b.ReportMetric(float64(total)*float64(b.N)/secure.Seconds()/1e6, "tls-MB/s")
	b.ReportMetric(plain.Seconds()/secure.Seconds(), "tls/plain")
}
