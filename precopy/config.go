package precopy

import (
	"context"
	"crypto/tls"
	"fmt"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/dmig/dmig/internal/bandwidth"
	"github.com/dmig/dmig/internal/ramfile"
	"github.com/dmig/dmig/internal/report"
	"github.com/dmig/dmig/wire"
)

const pageSize = ramfile.PageSize

// Mode is how memory moves.
type Mode string

const (
	// ModePrecopy sends every page before the destination resumes.
	ModePrecopy Mode = "precopy"
	// ModePostcopy resumes the destination at once; every page follows by
	// fault or background push.
	ModePostcopy Mode = "postcopy"
	// ModeHybrid pre-copies while it converges and switches over when the
	// remainder fits the budget or stops shrinking; the remainder follows by
	// post-copy (faults and background push).
	ModeHybrid Mode = "hybrid"
)

// ParseMode checks a mode name.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case ModePrecopy, ModePostcopy, ModeHybrid:
		return m, nil
	}
	return "", fmt.Errorf("unknown mode %q: want precopy, postcopy or hybrid", s)
}

// Config configures one migration from the source.
type Config struct {
	To            string        // destination address (host:port)
	Mode          Mode          // default hybrid
	Downtime      time.Duration // downtime budget, default 50ms
	MaxIterations int           // pre-copy passes at most, default 30
	BulkConns     int           // parallel bulk connections, default 2
	// Compress sends page data compressed with Codec (each batch that
	// shrinks by at least 1/16): worth it when the link, not the cores,
	// limits the transfer; on a fast LAN the compression itself becomes the
	// limit.
	Compress bool
	// Codec is what Compress compresses with (wire.CodecZstd if zero):
	// zstd takes the most bytes off, S2 the least CPU (wire.Codec).
	Codec wire.Codec
	// LayoutAddr is the guest's layout endpoint (host:port, see
	// layout.Fetch). In hybrid mode the pages its layout names go as
	// storage references; precopy and postcopy ignore it.
	LayoutAddr string
	// LayoutOnce fetches the layout before the first pass only, instead
	// of before every pass.
	LayoutOnce bool
	// LayoutTimeout bounds one layout fetch (default 5 s): a guest too
	// busy to answer costs the pass its references, not the migration. The
	// agent walks the whole buffer pool; a slow guest (TCG) needs longer.
	LayoutTimeout time.Duration
	Logger        hclog.Logger
	// TLS, if set, secures every connection to the destination (see
	// wire.WithTLS).
	TLS *tls.Config
	// ConnectTimeout, if set, bounds setting up the session (see
	// wire.WithTimeout): a destination that never answers aborts the
	// migration instead of holding the guest.
	ConnectTimeout time.Duration
	// RecoverTimeout is how long, after Go, a migration whose link to the
	// destination failed keeps reconnecting (0: it does not; the
	// migration fails with the guest paused here).
	RecoverTimeout time.Duration
	// LinkTimeout is how long a connection may go unanswered before it is
	// taken for lost (wire.WithLinkTimeout; 0: wire.DefaultLinkTimeout).
	LinkTimeout time.Duration
	// Progress, if set, is called after each pre-copy pass, periodically
	// during post-copy, and at completion, from the engine's goroutines: it
	// must return quickly.
	Progress func(report.Progress)
	// Live, if set, is called once the session to the destination is
	// open, with a function returning the migration's figures at that
	// instant (dmig status): that function may be called from any
	// goroutine, at any time, also after Run returned.
	Live func(snapshot func() report.Live)
	// Guard, if set, is told just before the source guest is paused and
	// just before Go is sent (see Guard); nil: no guard.
	Guard Guard
	// MaxBandwidth caps the page traffic to the destination, in bytes/s
	// (0: none): every bulk connection and the fault replies together draw
	// from one token bucket, fault replies without waiting up to a small
	// budget (internal/bandwidth). Ignored when Bandwidth is set.
	MaxBandwidth uint64
	// Bandwidth, if set, is the bucket the migration draws from instead: a
	// caller that keeps it may change the cap while the migration runs
	// (SetRate, e.g. from a control socket), or share a parent bucket
	// among migrations (a drain's total).
	Bandwidth *bandwidth.Limiter
}

// Guard watches over a migration from outside the migrating process, so
// that a migration killed before Go never leaves the source guest stopped
// (cmd/dmig runs a guardian process behind it, internal/guardian).
//
// Pausing is called before the guest is paused, outside the downtime: an
// error aborts with the guest untouched. Going is called after the
// destination is ready and before Go is written: an error aborts (the
// guest is resumed), since a guard that may not have heard "go" would
// resume the source while the destination runs. Both must return quickly.
type Guard interface {
	Pausing(ctx context.Context) error
	Going(ctx context.Context) error
}

type noGuard struct{}

func (noGuard) Pausing(context.Context) error { return nil }
func (noGuard) Going(context.Context) error   { return nil }

// abortResumeTimeout bounds resuming the source guest on abort: a wedged
// VMM (a QMP that never answers) must not hold the abort forever.
const abortResumeTimeout = 10 * time.Second

func (c *Config) defaults() {
	if c.Mode == "" {
		c.Mode = ModeHybrid
	}
	if c.Downtime <= 0 {
		c.Downtime = 50 * time.Millisecond
	}
	if c.MaxIterations <= 0 {
		c.MaxIterations = 30
	}
	if c.BulkConns <= 0 {
		c.BulkConns = 2
	}
	if !c.Compress {
		c.Codec = wire.CodecNone
	} else if c.Codec == wire.CodecNone {
		c.Codec = wire.CodecZstd
	}
	if c.LayoutTimeout <= 0 {
		c.LayoutTimeout = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = hclog.NewNullLogger()
	}
	if c.Guard == nil {
		c.Guard = noGuard{}
	}
	if c.Bandwidth == nil {
		c.Bandwidth = bandwidth.New(c.MaxBandwidth, nil, nil)
	}
}
