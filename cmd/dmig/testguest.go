package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/alecthomas/kong"
	"github.com/dustin/go-humanize"

	"github.com/dmig/dmig/internal/testguest"
)

// testguestCmd is `dmig testguest`: the self-verifying guest of the
// process-guest contract (see internal/testguest).
type testguestCmd struct {
	Run    testguestRunCmd    `cmd:"" help:"Run a test guest (a new one; an incoming one when DMIG_INCOMING=1)."`
	Verify testguestVerifyCmd `cmd:"" help:"Verify a stopped test guest's RAM file offline (exit 0 consistent, 3 mismatch)."`
	Hash   testguestHashCmd   `cmd:"" help:"Print the XXH3-128 digest of RAM files, as a resumed guest reports it (resume_ram_xxh3)."`
}

type testguestRunCmd struct {
	RAM    []string          `help:"RAM file (e.g. /dev/shm/NAME); repeat it to split the RAM evenly over several files. Ignored when DMIG_INCOMING=1 (DMIG_RAM names them)." sep:"none"`
	Resume bool              `help:"Continue the guest already in --ram (verified first) instead of creating one."`
	Size   testguestByteSize `help:"RAM size (1GiB, 512MiB, bytes)." default:"1GiB"`
	Seed   uint64            `help:"Seed of the workload and of the buffer pool's scatter." default:"1"`
	Fill   float64           `help:"Share of data pages written once at creation (the rest are zero pages)." default:"0"`
	Write  int64             `name:"write-rate" help:"Data-page writes per second." default:"20000"`
	Hot    float64           `help:"Share of pages that receive --hot-share of the accesses." default:"0.1"`
	HotSh  float64           `name:"hot-share" help:"Share of accesses that go to the hot pages." default:"0.9"`
	ReadSh float64           `name:"read-share" help:"Share of data-page operations that are reads (< 1)." default:"0.5"`
	DB     testguestDBFlags  `embed:"" prefix:""`
	Dur    time.Duration     `name:"duration" help:"Run this long, then exit 0 (0: until SIGINT/SIGTERM)." default:"0"`
	Stats  string            `help:"Rewrite this JSON file every second with the guest's progress."`
	Every  time.Duration     `name:"stats-every" help:"Log a stats line this often (0: never)." default:"10s"`
	Layout string            `name:"layout-listen" help:"Serve the clean frames' layout on this TCP address (database mode)."`
	NoVer  bool              `name:"skip-resume-verify" help:"When resuming, skip the full verify (the workload's reads still check what they touch): for post-copy measurements."`
}

type testguestDBFlags struct {
	File   string  `name:"db-file" help:"Data file on shared storage: enables the database-like mode (created afresh)."`
	DiskID string  `name:"db-disk-id" help:"Disk id of the data file in the layout." default:"data"`
	Pages  int64   `name:"db-pages" help:"16 KiB pages in the data file." default:"16384"`
	Frames int64   `name:"pool-frames" help:"16 KiB buffer-pool frames in RAM, each on 4 scattered guest pages." default:"8192"`
	Fill   float64 `name:"pool-fill" help:"Share of frames loaded (clean) at creation: a warm buffer pool." default:"0"`
	Read   int64   `name:"db-read-rate" help:"Buffer-pool page reads per second (loads on a miss)." default:"5000"`
	Modify int64   `name:"db-modify-rate" help:"Buffer-pool page modifications per second (frame becomes dirty)." default:"2000"`
	Flush  int64   `name:"db-flush-rate" help:"Dirty frames written back per second (frame becomes clean)." default:"1000"`
}

func (c *testguestRunCmd) Run(g *globals, ctx context.Context) error {
	cfg := testguest.Config{
		RAM:    c.RAM,
		Resume: c.Resume,
		Params: testguest.Params{
			Size: int64(c.Size), Seed: c.Seed, Fill: c.Fill, WriteRate: c.Write,
			Hot: c.Hot, HotShare: c.HotSh, ReadShare: c.ReadSh,
		},
		Run: testguest.RunOptions{
			Duration: c.Dur, StatsFile: c.Stats, StatsEvery: c.Every, LayoutListen: c.Layout, SkipResumeVerify: c.NoVer,
			Logger: g.logger("testguest"),
		},
	}
	if c.DB.File != "" {
		cfg.Params.DB = testguest.DBParams{
			File: c.DB.File, DiskID: c.DB.DiskID, Pages: c.DB.Pages, Frames: c.DB.Frames, Fill: c.DB.Fill,
			ReadRate: c.DB.Read, ModifyRate: c.DB.Modify, FlushRate: c.DB.Flush,
		}
	}
	return testguest.Start(ctx, cfg)
}

type testguestVerifyCmd struct {
	RAM []string `required:"" help:"RAM file(s) of a stopped or exited test guest, in order." sep:"none"`
}

func (c *testguestVerifyCmd) Run(g *globals) error {
	r, err := testguest.Verify(c.RAM...)
	if err != nil {
		return err
	}
	if !r.OK() {
		return &testguest.MismatchError{Report: r}
	}
	fmt.Printf("%s: consistent: %d pages, write counter %d, %d db file pages, %d modifications",
		strings.Join(c.RAM, ":"), r.Pages, r.Counter, r.DBFilePages, r.Modifies)
	for _, op := range r.Interrupted {
		fmt.Printf("; interrupted (redone on resume): %s", op)
	}
	fmt.Println()
	return nil
}

// testguestByteSize is a size flag in bytes that accepts units (1GiB).
type testguestByteSize int64

func (s *testguestByteSize) Decode(ctx *kong.DecodeContext) error {
	var v string
	if err := ctx.Scan.PopValueInto("size", &v); err != nil {
		return err
	}
	n, err := humanize.ParseBytes(v)
	if err != nil {
		return fmt.Errorf("parse size %q: %w", v, err)
	}
	*s = testguestByteSize(n)
	return nil
}

type testguestHashCmd struct {
	RAM []string `required:"" help:"RAM file(s), in order." sep:"none"`
}

func (c *testguestHashCmd) Run() error {
	h, err := testguest.HashRAM(c.RAM...)
	if err != nil {
		return err
	}
	fmt.Println(h)
	return nil
}
