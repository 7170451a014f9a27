package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dmig/dmig/internal/report"
	"github.com/dmig/dmig/wire"
)

// TestServeRequiresTLS: without TLS flags dmig serve refuses to start
// unless --insecure says so explicitly.
func TestServeRequiresTLS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	code, out := dmigRun(t, ctx, "serve", "--listen", freeAddr(t), "--dir", t.TempDir())
	if code != 2 || !strings.Contains(out, "refusing to serve without TLS") {
		t.Fatalf("serve without TLS: exit %d, %q; want 2 and a refusal", code, out)
	}
	dir := t.TempDir()
	p := newPKI(t, dir, "ca")
	cert, _ := p.issue("dest")
	code, out = dmigRun(t, ctx, "serve", "--listen", freeAddr(t), "--dir", t.TempDir(), "--tls-cert", cert, "--tls-ca", p.CAFile)
	if code != 2 || !strings.Contains(out, "--tls-key") {
		t.Fatalf("serve with half the TLS flags: exit %d, %q; want 2 naming the missing flag", code, out)
	}
}

// TestTLSRefusals runs dmig serve with mutual TLS and sends it Hellos whose
// command would create a marker file: from a peer without TLS, without a
// certificate, with a certificate of another CA, then garbage and a replay of
// a recorded good session. None gets a session directory or runs the
// command. A migration with the right certificates through the same server
// completes, and serve logs JSON (stderr is not a terminal).
func TestTLSRefusals(t *testing.T) {
	dir := t.TempDir()
	ca := newPKI(t, dir, "ca")
	other := newPKI(t, dir, "other")
	scert, skey := ca.issue("dest")
	ccert, ckey := ca.issue("source")
	srv := startServe(t, "--tls-cert", scert, "--tls-key", skey, "--tls-ca", ca.CAFile)

	marker := filepath.Join(dir, "pwned")
	evil := wire.Hello{Mode: "precopy", Guest: "evil", BulkConns: 1,
		Blocks:  []wire.Block{{Name: "ram0", Size: 1 << 20}},
		Command: []string{"/bin/sh", "-c", "touch " + marker}}
	noCert := ca.clientConfig(ca)
	noCert.GetClientCertificate = nil
	attacks := []struct {
		name string
		run  func(ctx context.Context) error
	}{
		{"plain", func(ctx context.Context) error { return dialClose(ctx, srv.addr, evil) }},
		{"no certificate", func(ctx context.Context) error { return dialClose(ctx, srv.addr, evil, wire.WithTLS(noCert)) }},
		{"other CA", func(ctx context.Context) error {
			return dialClose(ctx, srv.addr, evil, wire.WithTLS(other.clientConfig(ca)))
		}},
		{"garbage", func(ctx context.Context) error {
			return sendRaw(ctx, srv.addr, bytes.Repeat([]byte{0x16, 0x03, 0x01, 0xff, 0xff, 'D', 'M', 'I', 'G'}, 500))
		}},
	}
	for _, a := range attacks {
		t.Run(a.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := a.run(ctx); err == nil {
				t.Fatal("the server accepted the session")
			} else {
				t.Logf("refused: %v", err)
			}
			assertUntouched(t, srv, marker, 0)
		})
	}

	// A good migration, recorded by a proxy on its way.
	g := startSource(t, guestOpts{size: 64 << 20, writeRate: 2000})
	stats := filepath.Join(dir, "dst.stats")
	killDestGuest(t, stats)
	px := startRecorder(t, srv.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	repFile, promFile := filepath.Join(dir, "report.json"), filepath.Join(dir, "dmig.prom")
	args := append(migrateArgs(g, px.addr, "precopy", stats), "--tls-cert", ccert, "--tls-key", ckey, "--tls-ca", ca.CAFile,
		"--tls-server-name", "127.0.0.1", "--report", repFile, "--metrics-file", promFile)
	code, out := dmigRun(t, ctx, args...)
	if code != 0 {
		t.Fatalf("migrate with mutual TLS: exit %d\n%s", code, out)
	}
	waitDestRunning(t, stats)
	// The report and the metrics say the same.
	rep := readReport(t, repFile)
	if rep.Outcome != report.Completed || rep.Mode != "precopy" || rep.Iterations < 1 || rep.TotalMS <= 0 ||
		rep.GuestPages != 64<<20/4096 || rep.Pages.Data == 0 || rep.BytesSent < rep.Pages.Data*4096 {
		t.Fatalf("report %+v", rep)
	}
	checkMetrics(t, promFile, rep)
	if strings.Contains(out, "\x1b[") || strings.Contains(out, "\r") {
		t.Fatalf("terminal control sequences in migrate's output off a terminal:\n%q", out)
	}
	// Off a terminal every line is JSON, the summary included.
	var summary map[string]any
	for _, l := range jsonLogs(t, out) {
		if l["@message"] == "summary" {
			summary = l
		}
	}
	if summary == nil || summary["outcome"] != "completed" || summary["bytes_sent"] != float64(rep.BytesSent) {
		t.Fatalf("no JSON summary matching the report in migrate's output:\n%s", out)
	}
	if n := len(srv.sessions(t)); n != 1 {
		t.Fatalf("%d sessions accepted for one migration", n)
	}

	t.Run("replay", func(t *testing.T) {
		rec := px.first()
		if len(rec) < 500 {
			t.Fatalf("recorded only %d bytes of the control connection", len(rec))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := sendRaw(ctx, srv.addr, rec); err == nil {
			t.Fatal("the server answered the replay as dmig")
		}
		assertUntouched(t, srv, marker, 1)
	})

	// serve logs JSON lines (stderr is not a terminal), naming each refusal.
	time.Sleep(200 * time.Millisecond)
	logs := jsonLogs(t, srv.log.String())
	for _, want := range []string{"does not look like a TLS handshake", "didn't provide a certificate",
		"unknown authority", "oversized record", "bad record MAC"} {
		found := false
		for _, l := range logs {
			if e, _ := l["error"].(string); strings.Contains(e, "tls handshake") && strings.Contains(e, want) {
				found = true
			}
		}
		if !found {
			t.Errorf("no TLS refusal %q in serve's log", want)
		}
	}
}

// assertUntouched checks that no Hello's command ran and that serve
// accepted the expected number of sessions.
func assertUntouched(t *testing.T, srv *serveProc, marker string, sessions int) {
	t.Helper()
	time.Sleep(300 * time.Millisecond) // a started command would have run by now
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the peer's command ran on the destination")
	}
	if got := srv.sessions(t); len(got) != sessions {
		t.Fatalf("sessions accepted %v, want %d", got, sessions)
	}
}

func dialClose(ctx context.Context, addr string, h wire.Hello, opts ...wire.DialOption) error {
	s, err := wire.Dial(ctx, addr, h, opts...)
	if err != nil {
		return err
	}
	s.Close()
	return nil
}

// sendRaw writes b and reads until the server closes; nil if the server
// answered with a dmig preamble.
func sendRaw(ctx context.Context, addr string, b []byte) error {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer nc.Close()
	dl, _ := ctx.Deadline()
	nc.SetDeadline(dl)
	nc.Write(b)
	resp, err := io.ReadAll(nc)
	if bytes.Contains(resp, []byte("DMIG")) {
		return nil
	}
	if err == nil {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// recorder is a TCP proxy that keeps what the first connection sent.
type recorder struct {
	addr string
	mu   sync.Mutex
	rec  []byte
}

func startRecorder(t *testing.T, to string) *recorder {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	r := &recorder{addr: l.Addr().String()}
	go func() {
		for i := 0; ; i++ {
			c, err := l.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", to)
			if err != nil {
				c.Close()
				continue
			}
			go func() { io.Copy(c, up); c.Close() }()
			go func(i int) {
				var w io.Writer = up
				var buf bytes.Buffer
				if i == 0 {
					w = io.MultiWriter(up, &buf)
				}
				io.Copy(w, c)
				up.Close()
				if i == 0 {
					r.mu.Lock()
					r.rec = buf.Bytes()
					r.mu.Unlock()
				}
			}(i)
		}
	}()
	return r
}

func (r *recorder) first() []byte {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		r.mu.Lock()
		b := r.rec
		r.mu.Unlock()
		if b != nil {
			return b
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// readReport reads a --report file.
func readReport(t *testing.T, path string) report.Report {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var r report.Report
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("report %s: %v\n%s", path, err, b)
	}
	return r
}

var (
	promLine = regexp.MustCompile(`^(# (HELP|TYPE) [a-z_]+ .+|[a-z_]+(\{([a-z_]+="[^"\n]*",?)*\})? [-+0-9.eE]+)$`)
	promSent = regexp.MustCompile(`(?m)^dmig_migration_sent_bytes\{guest="([^"]*)",mode="([^"]*)"\} (\S+)$`)
)

// checkMetrics checks a --metrics-file line by line against the text format
// and its figures against the report.
func checkMetrics(t *testing.T, path string, rep report.Report) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		if !promLine.MatchString(l) {
			t.Fatalf("metrics line %d malformed: %q", i+1, l)
		}
	}
	var m []string
	for _, c := range promSent.FindAllStringSubmatch(string(b), -1) {
		if c[1] == rep.Guest {
			m = c
		}
	}
	if m == nil || m[2] != rep.Mode || m[3] != strconv.FormatUint(rep.BytesSent, 10) {
		t.Fatalf("metrics %v do not match the report (guest %s, mode %s, %d bytes):\n%s", m, rep.Guest, rep.Mode, rep.BytesSent, b)
	}
	want := "dmig_migration_completed{" + `guest="` + rep.Guest + `",mode="` + rep.Mode + `"} `
	if rep.Outcome == report.Completed {
		want += "1"
	} else {
		want += "0"
	}
	if !strings.Contains(string(b), want+"\n") {
		t.Fatalf("metrics lack %q:\n%s", want, b)
	}
}

// TestTLSPostcopy migrates a guest in post-copy over mutual TLS, so page
// requests and replies cross the urgent connection under TLS too: every
// page is placed by fault or prefetch and the destination guest verifies
// its RAM and runs on.
func TestTLSPostcopy(t *testing.T) {
	dir := t.TempDir()
	ca := newPKI(t, dir, "ca")
	scert, skey := ca.issue("dest")
	ccert, ckey := ca.issue("source")
	srv := startServe(t, "--tls-cert", scert, "--tls-key", skey, "--tls-ca", ca.CAFile)
	g := startSource(t, guestOpts{size: 256 << 20, writeRate: 20000})
	stats := filepath.Join(dir, "dst.stats")
	killDestGuest(t, stats)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	repFile := filepath.Join(dir, "report.json")
	args := append(migrateArgs(g, srv.addr, "postcopy", stats), "--tls-cert", ccert, "--tls-key", ckey, "--tls-ca", ca.CAFile, "--report", repFile)
	if code, out := dmigRun(t, ctx, args...); code != 0 {
		t.Fatalf("post-copy over TLS: exit %d\n%s", code, out)
	}
	rep := readReport(t, repFile)
	t.Logf("post-copy over TLS: total %.0f ms, downtime %.1f ms, faults %d, prefetch %d, fault latency %+v",
		rep.TotalMS, rep.DowntimeMS, rep.Pages.PostcopyFault, rep.Pages.Prefetch, rep.FaultLatencyUS)
	if rep.Outcome != report.Completed || rep.PostcopyPages != rep.GuestPages ||
		rep.Pages.PostcopyFault+rep.Pages.Prefetch != rep.PostcopyPages || rep.Pages.PostcopyFault == 0 {
		t.Fatalf("report %+v", rep)
	}
	st := waitDestRunning(t, stats)
	if st.VerifiedPages == 0 {
		t.Fatalf("destination guest verified nothing: %+v", st)
	}
}
