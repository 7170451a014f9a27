package compare

import (
	"context"
	"fmt"
	"time"

	"github.com/dmig/dmig/internal/ramfile"
	"github.com/dmig/dmig/vmm/qemu"
)

// checkQEMU reads the source VM's QEMU version and refuses a baseline that
// cannot be trusted: QEMU's own modes on a TCG VM of a QEMU older than
// 9.0, or destinations started by a QEMU of another version.
func (r *runner) checkQEMU(ctx context.Context) error {
	mon, err := qemu.Dial(ctx, r.cur)
	if err != nil {
		return err
	}
	defer mon.Close()
	v := mon.QEMUVersion()
	var kvm struct {
		Enabled bool `json:"enabled"`
	}
	if err := mon.Execute(ctx, "query-kvm", nil, &kvm); err != nil {
		return fmt.Errorf("ask the source whether it runs kvm: %w", err)
	}
	r.res.QEMU, r.res.TCG = v.String(), !kvm.Enabled
	if b := r.cfg.QEMUBinary; b != "" {
		bv, err := qemu.BinaryVersion(ctx, b)
		if err != nil {
			return err
		}
		if bv != v {
			return fmt.Errorf("%w: %s is QEMU %s, the VM runs on %s: start the VM with %s", ErrQEMUVersion, b, bv, v, b)
		}
	}
	native := false
	for _, m := range r.cfg.Modes {
		native = native || qemu.IsNative(m)
	}
	if !native || !r.res.TCG || v.AtLeast(qemu.TCGDirtyFix.Major, qemu.TCGDirtyFix.Minor) {
		return nil
	}
	if !r.cfg.AllowBuggyQEMU {
		return fmt.Errorf("%w: the VM runs QEMU %s under TCG, whose own migration misses guest stores made "+
			"through cached TLB entries (fixed in QEMU %d.%d by commit 03bfc2188f, \"physmem: Fix migration dirty "+
			"bitmap coherency with TCG memory access\"): start the VM on QEMU 10 (make qemu10), or force with --allow-buggy-qemu",
			ErrBuggyQEMU, v, qemu.TCGDirtyFix.Major, qemu.TCGDirtyFix.Minor)
	}
	r.log.Warn("QEMU's own modes on a QEMU whose TCG loses pages in migration (before 03bfc2188f): its figures are not a baseline", "qemu", v)
	return nil
}

// checkRAM runs the RAM oracle on the migration from src into tg, both
// paused, and records it. A failure to check is logged, not fatal: the
// migration itself went through. With placedOnly it returns, by block, the
// extents it compared.
func (r *runner) checkRAM(src *qemu.Source, tg *qemu.Target, placedOnly bool) [][]ramfile.Extent {
	start := time.Now()
	o := &Oracle{}
	var compared [][]ramfile.Extent
	for _, b := range src.RAM() {
		dst, ok := tg.RAMFile(b.Name)
		if !ok {
			r.log.Warn("RAM oracle: no destination file for a block", "block", b.Name)
			return nil
		}
		d, err := ramfile.Diff(b.Path, dst, int64(b.Size), placedOnly)
		if err != nil {
			r.log.Warn("RAM oracle failed", "block", b.Name, "error", err)
			return nil
		}
		compared = append(compared, d.Compared)
		if d.Differ > 0 && o.FirstDiffer == nil {
			first := d.First
			o.FirstDiffer = &first
		}
		o.PagesChecked += d.Checked
		o.PagesDiffer += d.Differ
		o.PagesUnchecked += d.Unchecked
	}
	o.PauseMS = float64(time.Since(start).Microseconds()) / 1000
	r.oracle = o
	return compared
}

// oracleTarget is the destination of one of dmig's modes with the RAM
// oracle run as the engine resumes it: the source is paused then, and the
// destination has not run. In pre-copy every page is placed by then; in
// post-copy and hybrid only the pages placed so far are compared.
//
// The pages placed after resume are checked as they are placed
// (dbrestore.PlaceWatcher): the source stays paused until the migration
// completes, so its RAM is still the switchover's.
type oracleTarget struct {
	*qemu.Target
	r          *runner
	src        *qemu.Source
	placedOnly bool
	placed     *ramfile.PlaceCheck // pages placed after resume
	compared   [][]ramfile.Extent  // by block, what the check at resume compared
}

func newOracleTarget(tg *qemu.Target, r *runner, src *qemu.Source, placedOnly bool) *oracleTarget {
	var paths []string
	for _, b := range src.RAM() {
		paths = append(paths, b.Path)
	}
	return &oracleTarget{Target: tg, r: r, src: src, placedOnly: placedOnly, placed: ramfile.NewPlaceCheck(paths)}
}

// Placed compares a page placed after switchover with the paused source's.
func (o *oracleTarget) Placed(block uint32, page uint64, data []byte) {
	o.placed.Placed(block, page, data)
}

// finish folds the pages checked after resume into the runner's oracle
// and closes the source's files.
func (o *oracleTarget) finish() {
	pr, err := o.placed.Result()
	if err != nil {
		o.r.log.Warn("RAM oracle: pages placed after resume not all checked", "error", err)
	}
	or := o.r.oracle
	if or == nil {
		return
	}
	// A page faulted in while the destination loaded its device state was
	// compared at resume too: count it once.
	for b, ext := range o.compared {
		c, d := o.placed.Overlap(uint32(b), ext)
		pr.Checked -= c
		pr.Differ -= d
	}
	or.PagesChecked += pr.Checked
	or.PagesDiffer += pr.Differ
	or.PagesUnchecked -= min(or.PagesUnchecked, pr.Checked)
	if pr.Differ > 0 && or.FirstDiffer == nil {
		off := pr.First
		or.FirstDiffer = &off
	}
}

func (o *oracleTarget) Resume(ctx context.Context) error {
	o.compared = o.r.checkRAM(o.src, o.Target, o.placedOnly)
	return o.Target.Resume(ctx)
}
