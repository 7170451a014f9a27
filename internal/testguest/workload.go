package testguest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
)

// RunOptions control one run of the workload; unlike Params they are not
// stored in RAM, so the source and destination may differ.
type RunOptions struct {
	// Duration of the workload; 0 runs until ctx is done.
	Duration time.Duration
	// StatsFile, if set, is rewritten (atomically) every second with a
	// JSON Stats, so tests and operators can follow progress.
	StatsFile string
	// StatsEvery is the interval of the stats log line; 0 disables it.
	StatsEvery time.Duration
	// LayoutListen, if set (database mode only), is the TCP address of the
	// layout endpoint reporting the clean frames.
	LayoutListen string
	// SkipResumeVerify makes a resuming guest (incoming or --resume) skip
	// the full verify and go straight to its workload, whose reads still
	// check every page they touch. For post-copy measurements: the full
	// verify reads all of RAM at once, which is no workload's access
	// pattern. Check the RAM offline afterwards (Verify).
	SkipResumeVerify bool
	// Logger receives the stats lines and lifecycle events.
	Logger hclog.Logger
}

// Stats is the guest's progress, as written to RunOptions.StatsFile.
type Stats struct {
	PID   int    `json:"pid"`
	State string `json:"state"` // "verifying", "running", "done" or "failed"
	// Resumed is true when this run continued existing RAM (incoming or
	// --resume) after verifying it.
	Resumed bool `json:"resumed"`
	// VerifiedPages is the number of RAM pages verified at resume.
	VerifiedPages int64 `json:"verified_pages"`
	// ResumeRAMHash is HashRAM's digest of the RAM as the resuming guest
	// found it, before it wrote anything (not with SkipResumeVerify).
	ResumeRAMHash string `json:"resume_ram_xxh3,omitempty"`
	// Counter is the write counter in RAM (all writes since creation).
	Counter uint64 `json:"counter"`
	// Writes and Reads are data-page operations by this process.
	Writes       uint64  `json:"writes"`
	Reads        uint64  `json:"reads"`
	WritesPerSec float64 `json:"writes_per_s"`
	ReadsPerSec  float64 `json:"reads_per_s"`
	DBReads      uint64  `json:"db_reads"`
	DBLoads      uint64  `json:"db_loads"`
	DBModifies   uint64  `json:"db_modifies"`
	DBFlushes    uint64  `json:"db_flushes"`
	// LayoutAddr is where the layout endpoint listens, if it does.
	LayoutAddr string `json:"layout_addr,omitempty"`
	// Modifies is the buffer pool's modification counter in RAM.
	Modifies uint64    `json:"modifies"`
	Time     time.Time `json:"time"`
}

// ReadStats reads a stats file written by a running guest.
func ReadStats(path string) (Stats, error) {
	var s Stats
	b, err := os.ReadFile(path)
	if err != nil {
		return s, fmt.Errorf("read stats: %w", err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("parse stats %s: %w", path, err)
	}
	return s, nil
}

// counters are this process's operation counts, shared with the stats
// goroutine.
type counters struct {
	writes, reads, dbReads, dbLoads, dbModifies, dbFlushes atomic.Uint64
}

// pacer spreads rate operations per second evenly: at any moment it owes
// the operations due since start that are not done yet. A stall (SIGSTOP,
// a slow post-copy fault) forgives all but 50 ms of backlog, so the guest
// resumes at its rate rather than in a burst.
type pacer struct {
	rate float64
	done int64
}

func (p *pacer) owed(elapsed time.Duration) int64 {
	if p.rate <= 0 {
		return 0
	}
	target := int64(elapsed.Seconds() * p.rate)
	if backlog := int64(p.rate/20) + 1; target-p.done > backlog {
		p.done = target - backlog
	}
	return target - p.done
}

// picker draws page numbers in [0, n): a share of the draws from a hot set
// of hot·n pages spread over the range by a multiplicative permutation, the
// rest uniformly.
type picker struct {
	n, hot int64
	a, b   uint64
	share  float64
}

func newPicker(n int64, hot, share float64, seed uint64) picker {
	p := picker{n: n, hot: int64(math.Round(hot * float64(n))), share: share}
	if p.hot == 0 && hot > 0 {
		p.hot = 1
	}
	p.a = mix(seed)%uint64(n) | 1
	for gcd(p.a, uint64(n)) != 1 {
		p.a++
	}
	p.b = mix(seed+gamma) % uint64(n)
	return p
}

func gcd(a, b uint64) uint64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

func (p *picker) pick(r *rand.Rand) int64 {
	if p.hot > 0 && r.Float64() < p.share {
		return p.at(r.Int64N(p.hot))
	}
	return r.Int64N(p.n)
}

// at is the j-th page of the permutation (distinct for distinct j < n).
func (p *picker) at(j int64) int64 {
	hi, lo := bits.Mul64(uint64(j), p.a)
	lo, c := bits.Add64(lo, p.b, 0)
	return int64(bits.Rem64(hi+c, lo, uint64(p.n)))
}

// Run runs the workload until ctx is done or o.Duration has passed, first
// finishing any operation a stop interrupted. It returns a *MismatchError
// as soon as a read finds a wrong page.
func (g *Guest) Run(ctx context.Context, o RunOptions) error {
	return g.run(ctx, o, Stats{})
}

func (g *Guest) run(ctx context.Context, o RunOptions, base Stats) error {
	log := o.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	// An operation a stop interrupted must be finished before the next
	// one overwrites its intent (a no-op after resume, which redid it).
	if err := g.redo(); err != nil {
		return err
	}
	if o.LayoutListen != "" {
		addr, stopLayout, err := g.serveLayout(ctx, o.LayoutListen, log)
		switch {
		case err == nil:
			defer stopLayout()
			base.LayoutAddr = addr
		case base.Resumed:
			// A destination on the source's host may find the address
			// still held by the stopped source: the guest must run on
			// (it is already resumed), without its endpoint.
			log.Warn("layout endpoint not served", "error", err)
		default:
			return err
		}
	}
	var c counters
	statsCtx, stopStats := context.WithCancel(context.Background())
	statsDone := make(chan struct{})
	go func() {
		defer close(statsDone)
		g.reportStats(statsCtx, o, log, base, &c)
	}()
	start := g.snapshot(base, &c, nil, 0)
	err := g.loop(ctx, o.Duration, &c)
	stopStats()
	<-statsDone
	base.State = "done"
	if err != nil {
		base.State = "failed"
	}
	if o.StatsFile != "" {
		// The last line's rates are the run's averages.
		end := g.snapshot(base, &c, &start, time.Since(start.Time))
		if serr := writeStats(o.StatsFile, end); serr != nil && err == nil {
			err = serr
		}
	}
	return err
}

func (g *Guest) loop(ctx context.Context, dur time.Duration, c *counters) error {
	p := g.p
	r := rand.New(rand.NewPCG(p.Seed, g.h.load(offCounter)^uint64(time.Now().UnixNano())))
	data := newPicker(g.geo.dataPages, p.Hot, p.HotShare, p.Seed)
	writes := pacer{rate: float64(p.WriteRate)}
	reads := pacer{rate: float64(p.WriteRate) * p.ReadShare / (1 - p.ReadShare)}
	var dbp picker
	var dbReads, dbMods, dbFlushes pacer
	var used, hand int64
	if g.geo.frames > 0 {
		dbp = newPicker(g.geo.dbPages, p.Hot, p.HotShare, p.Seed^0xdb)
		dbReads.rate, dbMods.rate, dbFlushes.rate = float64(p.DB.ReadRate), float64(p.DB.ModifyRate), float64(p.DB.FlushRate)
		for k := range g.geo.frames {
			if g.descPage(k).Load() != 0 {
				used = k + 1
			}
		}
	}
	// Frames fill in order; once all are used a victim is any frame.
	victim := func() int64 {
		if used < g.geo.frames {
			used++
			return used - 1
		}
		return r.Int64N(g.geo.frames)
	}
	readDB := func(d int64) (int64, error) {
		loads := g.h.load(offLoadCount)
		k, err := g.readDB(d, victim)
		if g.h.load(offLoadCount) != loads {
			c.dbLoads.Add(1)
		}
		return k, err
	}
	const batch = 64
	start := time.Now()
	for ctx.Err() == nil {
		el := time.Since(start)
		if dur > 0 && el >= dur {
			return nil
		}
		busy := false
		for n := min(writes.owed(el), batch); n > 0; n-- {
			g.writeData(data.pick(r), writeSteps)
			writes.done++
			c.writes.Add(1)
			busy = true
		}
		for n := min(reads.owed(el), batch); n > 0; n-- {
			if err := g.readData(data.pick(r)); err != nil {
				return err
			}
			reads.done++
			c.reads.Add(1)
			busy = true
		}
		for n := min(dbReads.owed(el), batch); n > 0; n-- {
			if _, err := readDB(dbp.pick(r)); err != nil {
				return err
			}
			dbReads.done++
			c.dbReads.Add(1)
			busy = true
		}
		for n := min(dbMods.owed(el), batch); n > 0; n-- {
			d := dbp.pick(r)
			k, err := readDB(d)
			if err != nil {
				return err
			}
			g.modifyFrame(k, d, modifySteps)
			dbMods.done++
			c.dbModifies.Add(1)
			busy = true
		}
		for n := min(dbFlushes.owed(el), batch); n > 0; n-- {
			// A clock hand finds the next dirty frame; with none dirty
			// within a bounded scan, the flush is skipped.
			for range min(g.geo.frames, 4096) {
				k := hand
				hand = (hand + 1) % g.geo.frames
				if g.descDirty(k).Load() == 1 {
					if err := g.flushFrame(k, flushSteps); err != nil {
						return err
					}
					c.dbFlushes.Add(1)
					break
				}
			}
			dbFlushes.done++
			busy = true
		}
		if !busy {
			time.Sleep(200 * time.Microsecond)
		}
	}
	return nil
}

func (g *Guest) snapshot(base Stats, c *counters, prev *Stats, dt time.Duration) Stats {
	s := base
	s.PID = os.Getpid()
	s.Counter = g.h.load(offCounter)
	s.Modifies = g.h.load(offModCount)
	s.Writes, s.Reads = c.writes.Load(), c.reads.Load()
	s.DBReads, s.DBLoads, s.DBModifies, s.DBFlushes = c.dbReads.Load(), c.dbLoads.Load(), c.dbModifies.Load(), c.dbFlushes.Load()
	if prev != nil && dt > 0 {
		s.WritesPerSec = float64(s.Writes-prev.Writes) / dt.Seconds()
		s.ReadsPerSec = float64(s.Reads-prev.Reads) / dt.Seconds()
	}
	s.Time = time.Now().UTC()
	return s
}

func (g *Guest) reportStats(ctx context.Context, o RunOptions, log hclog.Logger, base Stats, c *counters) {
	base.State = "running"
	prev := g.snapshot(base, c, nil, 0)
	lastLog := time.Now()
	if o.StatsFile != "" {
		if err := writeStats(o.StatsFile, prev); err != nil {
			log.Warn("write stats", "error", err)
		}
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// Measure the interval rather than assume one second: a stopped
		// guest's ticks arrive late.
		s := g.snapshot(base, c, &prev, time.Since(prev.Time))
		if o.StatsFile != "" {
			if err := writeStats(o.StatsFile, s); err != nil {
				log.Warn("write stats", "error", err)
			}
		}
		// Ticks jitter: a line due within half a tick is due now.
		if o.StatsEvery > 0 && time.Since(lastLog) >= o.StatsEvery-500*time.Millisecond {
			lastLog = time.Now()
			log.Info("stats", "counter", s.Counter, "writes_per_s", int64(s.WritesPerSec), "reads_per_s", int64(s.ReadsPerSec),
				"db_reads", s.DBReads, "db_loads", s.DBLoads, "db_modifies", s.DBModifies, "db_flushes", s.DBFlushes)
		}
		prev = s
	}
}

// writeStats replaces the stats file atomically so a reader never sees a
// half-written one.
func writeStats(path string, s Stats) error {
	b, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("encode stats: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".stats-*")
	if err != nil {
		return fmt.Errorf("write stats: %w", err)
	}
	_, err = tmp.Write(append(b, '\n'))
	err = errors.Join(err, tmp.Close())
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write stats %s: %w", path, err)
	}
	return nil
}
