package tests

import (
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/dmig/dmig/internal/report"
	"github.com/dmig/dmig/internal/testguest"
	"github.com/dmig/dmig/precopy"
	"github.com/dmig/dmig/wire"
)

const gib = 1 << 30

// TestModes migrates a 1 GiB test guest writing 20 k pages/s in each mode,
// and in pre-copy and post-copy with compressed page data. The destination
// guest verifies every page when it resumes and checks each page it reads
// afterwards; in pre-copy the destination RAM at resume must equal the
// source RAM at switchover byte for byte (the source guest is paused then
// killed, so its RAM file is that state).
func TestModes(t *testing.T) {
	cases := []struct {
		mode     precopy.Mode
		compress bool
		codec    wire.Codec
	}{{precopy.ModePrecopy, false, 0}, {precopy.ModePostcopy, false, 0}, {precopy.ModeHybrid, false, 0},
		{precopy.ModePrecopy, true, wire.CodecZstd}, {precopy.ModePostcopy, true, wire.CodecZstd}, {precopy.ModeHybrid, true, wire.CodecS2}}
	for _, c := range cases {
		mode := c.mode
		name := string(mode)
		if c.compress {
			name += "-" + c.codec.String()
		}
		t.Run(name, func(t *testing.T) {
			g := startSource(t, guestOpts{size: gib, writeRate: 20000})
			dir := t.TempDir()
			d := startDest(t, destOpts{})
			destStats := filepath.Join(dir, "dst.stats")
			rep, err := migrateWith(t, g, precopy.Config{To: d.addr, Mode: mode, Compress: c.compress, Codec: c.codec}, destStats)
			if err != nil {
				t.Fatalf("migrate: %v", err)
			}
			if err := <-d.result; err != nil {
				t.Fatalf("destination: %v", err)
			}
			tt := <-d.targets
			t.Logf("%s: total %.0f ms, downtime %.1f ms, %d MB, %d iterations, pages %+v, postcopy %d, fault latency %+v",
				mode, rep.TotalMS, rep.DowntimeMS, rep.BytesSent>>20, rep.Iterations, rep.Pages, rep.PostcopyPages, rep.FaultLatencyUS)
			if rep.Outcome != report.Completed {
				t.Fatalf("outcome %s", rep.Outcome)
			}
			if want := map[bool]string{true: c.codec.String()}[c.compress]; rep.Codec != want {
				t.Errorf("report codec %q, want %q", rep.Codec, want)
			}
			// Test guest pages are half one repeated word: compressed, the
			// data pages must take well under their size (the pre-copy
			// pass carries them; post-copy's replies to faults go as they
			// are, so its bound is looser).
			if sent, data := rep.BytesSent, (rep.Pages.Data+rep.Pages.Prefetch+rep.Pages.PostcopyFault)*testguest.PageSize; c.compress && sent > data*3/4 {
				t.Errorf("compressed: %d bytes sent for %d bytes of data pages", sent, data)
			}
			switch mode {
			case precopy.ModePrecopy:
				if rep.PostcopyPages != 0 || rep.Pages.PostcopyFault != 0 || rep.Pages.Prefetch != 0 {
					t.Errorf("pre-copy left pages to post-copy: %+v", rep)
				}
			case precopy.ModePostcopy:
				if rep.PostcopyPages != rep.GuestPages || rep.Iterations != 0 {
					t.Errorf("post-copy sent pages before resume: postcopy %d of %d, %d iterations", rep.PostcopyPages, rep.GuestPages, rep.Iterations)
				}
				if rep.Pages.PostcopyFault+rep.Pages.Prefetch != rep.PostcopyPages {
					t.Errorf("post-copy placed %d+%d pages, owed %d", rep.Pages.PostcopyFault, rep.Pages.Prefetch, rep.PostcopyPages)
				}
			}
			// The source guest must be gone (killed after completion).
			select {
			case <-g.exit:
			case <-time.After(10 * time.Second):
				t.Fatal("source guest still running after migration")
			}
			st := waitGuestHealthy(t, tt, destStats)
			if st.VerifiedPages == 0 {
				t.Errorf("destination guest verified no pages: %+v", st)
			}
			if mode == precopy.ModePrecopy {
				// The guest hashes its RAM as it finds it at resume.
				want, err := testguest.HashRAM(g.ram)
				if err != nil {
					t.Fatal(err)
				}
				if st.ResumeRAMHash != want {
					t.Fatalf("destination RAM at resume (xxh3 %s) differs from source RAM at switchover (%s)", st.ResumeRAMHash, want)
				}
			}
			// Stop the destination guest and verify its RAM offline too.
			syscall.Kill(tt.Pid(), syscall.SIGKILL)
			<-tt.Exited()
			r, err := testguest.Verify(tt.Paths()[0])
			if err != nil {
				t.Fatal(err)
			}
			if !r.OK() {
				t.Fatalf("destination RAM fails verification: %v", r.Mismatches)
			}
		})
	}
}
