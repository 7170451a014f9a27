package guest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/term"

	"github.com/dmig/dmig/layout"
)

// Config configures an Agent.
type Config struct {
	DSN    string  // go-sql-driver DSN; DefaultDSN if empty
	PID    int     // the server's pid; 0: read its pid file
	Rate   float64 // MiB of buffer pool read per second; 0: unlimited
	Chunk  int     // bytes per read of the server's memory; default 4 MiB
	Sysfs  string  // sysfs root; default "/sys"
	Logger hclog.Logger
}

// Agent takes layouts of one database server's buffer pool. Scans are
// serialized. It owns a connection pool to the server until Close.
type Agent struct {
	cfg Config
	log hclog.Logger
	db  *sql.DB

	mu  sync.Mutex // one scan at a time
	gen uint64
}

// Result is one scan.
type Result struct {
	Layout  *layout.Layout
	Stats   Stats
	Server  *Server
	PID     int
	Regions []Region
	// Checkpoint is the server's checkpoint LSN read after the memory scan
	// (0 if it reports none): no named page changed at or after it.
	Checkpoint uint64
}

// NewAgent makes an agent; it connects on the first scan.
func NewAgent(cfg Config) (*Agent, error) {
	if cfg.DSN == "" {
		cfg.DSN = DefaultDSN
	}
	if cfg.Chunk <= 0 {
		cfg.Chunk = 4 << 20
	}
	cfg.Chunk = max(cfg.Chunk&^(64<<10-1), 64<<10) // whole frames of any page size
	if cfg.Sysfs == "" {
		cfg.Sysfs = "/sys"
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	db, err := openDB(cfg.DSN)
	if err != nil {
		return nil, err
	}
	return &Agent{cfg: cfg, log: cfg.Logger, db: db}, nil
}

// Close closes the connection pool.
func (a *Agent) Close() error { return a.db.Close() }

// Layout takes a new layout: the function layout.Serve wants.
func (a *Agent) Layout(ctx context.Context) (*layout.Layout, error) {
	r, err := a.Scan(ctx)
	if err != nil {
		a.log.Error("scan failed", "error", err)
		return nil, err
	}
	return r.Layout, nil
}

// Scan finds the clean frames of the server's buffer pool and returns their
// layout: guest-physical page → (disk, offset). It takes no lock inside the
// server: it reads information_schema's tablespace lists and the server's
// memory through /proc, never INNODB_BUFFER_PAGE.
func (a *Agent) Scan(ctx context.Context) (*Result, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	t0, cpu0 := time.Now(), processCPU()

	srv, err := discover(ctx, a.db)
	if err != nil {
		return nil, err
	}
	pid, err := findPID(srv, a.cfg.PID)
	if err != nil {
		return nil, err
	}
	maps, err := readMaps(pid)
	if err != nil {
		return nil, err
	}
	regions, err := findPool(maps, srv)
	if err != nil {
		return nil, err
	}
	mem, err := OpenMem(pid)
	if err != nil {
		return nil, err
	}
	defer mem.Close()
	pm, err := OpenPagemap(pid)
	if err != nil {
		return nil, err
	}
	defer pm.Close()

	s := &scanner{srv: srv, mem: mem, pm: pm, rate: a.cfg.Rate * (1 << 20), chunk: a.cfg.Chunk}
	if err := s.scan(ctx, regions); err != nil {
		return nil, fmt.Errorf("scan buffer pool of pid %d: %w", pid, err)
	}
	ckpt, err := checkpointLSN(ctx, a.db)
	if err != nil {
		return nil, err
	}
	dm := newDiskMap(a.cfg.Sysfs)
	refs, err := s.refs(dm, ckpt)
	if err != nil {
		return nil, fmt.Errorf("map buffer pool of pid %d: %w", pid, err)
	}
	for id, fm := range dm.files {
		if fm.err != nil {
			a.log.Warn("tablespace not mapped to a disk", "space", id, "path", srv.Spaces[id].Path, "error", fm.err)
		}
	}
	l, err := layout.Build(refs)
	if err != nil {
		return nil, fmt.Errorf("build layout: %w", err)
	}
	l.Disks = dm.disks
	a.gen = max(a.gen+1, uint64(time.Now().UnixNano()))
	l.Generation = a.gen

	s.stats.Refs = l.Pages()
	s.stats.Runs = len(l.Runs)
	s.stats.Duration = time.Since(t0)
	s.stats.CPU = processCPU() - cpu0
	a.log.Debug("scan done", "pid", pid, "frames", s.stats.Frames, "clean", s.stats.Clean,
		"dirty", s.stats.Dirty, "refs", s.stats.Refs, "runs", s.stats.Runs, "duration", s.stats.Duration)
	return &Result{Layout: l, Stats: s.stats, Server: srv, PID: pid, Regions: regions, Checkpoint: ckpt}, nil
}

// ServeConfig says where to serve layouts.
type ServeConfig struct {
	// Listen is a loopback TCP address, e.g. "127.0.0.1:7070"; empty:
	// none. A layout names where the database's pages are in guest memory
	// and on disk: only the host may ask (through the channel), or a
	// process in the guest, so other addresses are refused.
	Listen  string
	Channel string // a virtio-serial port (or any char device); empty: none
	// RefreshEvery, if set, takes a layout in the background this often,
	// so a request without the refresh flag (dmig's first pass) is answered
	// at once instead of after a walk of the whole buffer pool; such
	// requests get a layout at most twice this old. Each walk costs guest
	// CPU (0.1-0.8 s per 200 k frames natively).
	RefreshEvery time.Duration
}

// Serve answers layout requests until ctx ends (then it returns nil) or a
// listener fails. Requests on the TCP listener and on the channel share one
// layout cache: a request without the refresh flag gets the last layout.
func (a *Agent) Serve(ctx context.Context, sc ServeConfig) error {
	if sc.Listen == "" && sc.Channel == "" {
		return errors.New("serve: give a listen address or a channel")
	}
	srv := layout.NewServer(a.Layout)
	srv.Pool = a.Pool
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 2)
	n := 0
	// Without background refreshes a cached layout may be from a
	// migration long past: one a few seconds old still saves a walk.
	srv.MaxAge = 10 * time.Second
	if sc.RefreshEvery > 0 {
		srv.MaxAge = 2 * sc.RefreshEvery
		go a.refresh(ctx, srv, sc.RefreshEvery)
	}
	if sc.Listen != "" {
		if err := loopbackOnly(sc.Listen); err != nil {
			return err
		}
		ln, err := net.Listen("tcp", sc.Listen)
		if err != nil {
			return fmt.Errorf("serve: %w", err)
		}
		a.log.Info("serving layouts", "listen", ln.Addr().String())
		n++
		go func() { errc <- srv.Serve(ctx, ln) }()
	}
	if sc.Channel != "" {
		n++
		go func() { errc <- a.serveChannel(ctx, srv, sc.Channel) }()
	}
	var first error
	for range n {
		if err := <-errc; err != nil && first == nil {
			first = err
			cancel()
		}
	}
	return first
}

// refresh keeps srv's cached layout fresh until ctx ends. A failed take
// (the server restarting) is logged and retried at the next tick.
func (a *Agent) refresh(ctx context.Context, srv *layout.Server, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if err := srv.Refresh(ctx); err != nil && ctx.Err() == nil {
			a.log.Warn("background layout", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// loopbackOnly refuses a listen address reachable from outside the guest.
func loopbackOnly(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("serve: listen address %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("serve: %w: %q is not a loopback address (serve the host through a virtio-serial --channel)", ErrNotLoopback, addr)
	}
	return nil
}

// serveChannel answers requests on a character device such as a
// virtio-serial port (/dev/virtio-ports/NAME). While no host is connected
// the port reads end of file: the agent then retries every pollInterval.
func (a *Agent) serveChannel(ctx context.Context, srv *layout.Server, path string) error {
	const pollInterval = 200 * time.Millisecond
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	defer f.Close()
	// f.Fd() would put the fd in blocking mode and make ServeConn's
	// deadlines useless: reach the fd through SyscallConn instead.
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	var rawErr error
	if err := rc.Control(func(fd uintptr) {
		if term.IsTerminal(int(fd)) {
			// An hvc console or a pty: binary frames must pass untouched.
			_, rawErr = term.MakeRaw(int(fd))
		}
	}); err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	if rawErr != nil {
		return fmt.Errorf("set channel %s raw: %w", path, rawErr)
	}
	a.log.Info("serving layouts", "channel", path)
	for {
		err := srv.ServeConn(ctx, f)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			a.log.Warn("channel", "path", path, "error", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(pollInterval):
		}
	}
}
