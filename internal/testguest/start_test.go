package testguest

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestResumeRedoesTheInterruptedOperationsAndContinues(t *testing.T) {
	g, ram := dbGuest(t)
	_, k, _ := frames(t, g)
	g.writeData(3, 2)                          // content written, table not yet
	if err := g.flushFrame(k, 2); err != nil { // file written, table not yet
		t.Fatal(err)
	}
	before := mustVerify(t, ram)
	if len(before.Interrupted) != 2 {
		t.Fatalf("interrupted %q, want a write and a flush", before.Interrupted)
	}
	stats := filepath.Join(filepath.Dir(ram), "stats")
	if err := Start(context.Background(), Config{RAM: []string{ram}, Resume: true, Run: RunOptions{Duration: 300 * time.Millisecond, StatsFile: stats}}); err != nil {
		t.Fatal(err)
	}
	after := mustVerify(t, ram)
	if len(after.Interrupted) != 0 || after.Counter <= before.Counter+1000 {
		t.Fatalf("after resume: interrupted %q, counter %d→%d", after.Interrupted, before.Counter, after.Counter)
	}
	if s, err := ReadStats(stats); err != nil || !s.Resumed || s.State != "done" || s.VerifiedPages != after.Pages {
		t.Fatalf("stats %+v, %v", s, err)
	}
}

func TestResumeRefusesInconsistentState(t *testing.T) {
	g, ram := dbGuest(t)
	t.Run("wrong page", func(t *testing.T) {
		n := g.geo.dataStart + 1
		g.page(n)[9] ^= 1
		defer func() { g.page(n)[9] ^= 1 }()
		err := Start(context.Background(), Config{RAM: []string{ram}, Resume: true, Run: RunOptions{Duration: time.Millisecond}})
		var me *MismatchError
		if !errors.As(err, &me) || me.ExitCode() != ExitMismatch || me.Report.Mismatches[0].Page != n {
			t.Fatalf("resume of a corrupt guest: %v", err)
		}
	})
	t.Run("truncated data file", func(t *testing.T) {
		if err := os.Truncate(g.p.DB.File, 100*DBPageSize); err != nil {
			t.Fatal(err)
		}
		err := Start(context.Background(), Config{RAM: []string{ram}, Resume: true, Run: RunOptions{Duration: time.Millisecond}})
		var me *MismatchError
		if !errors.As(err, &me) || me.Report.Mismatches[0].Region != "disk" {
			t.Fatalf("resume with a truncated data file: %v", err)
		}
	})
}

func TestDataFilePathIsStoredAbsolute(t *testing.T) {
	dir := shmDir(t)
	t.Chdir(dir)
	p := smallDBParams("")
	if err := Create("ram", p); err != nil {
		t.Fatal(err)
	}
	if got, want := readRAM(t, filepath.Join(dir, "ram")).Params().DB.File, filepath.Join(dir, "data.db"); got != want {
		t.Fatalf("data file in the header %q, want %q", got, want)
	}
}

func TestRunFinishesAnInterruptedOperationFirst(t *testing.T) {
	g, ram := dbGuest(t)
	_, k, _ := frames(t, g)
	i := int64(4)
	v := g.ver(i).Load()
	g.writeData(i, 2)
	g.modifyFrame(k, int64(g.descPage(k).Load())-1, 2)
	run(t, g, 50*time.Millisecond)
	if r := mustVerify(t, ram); len(r.Interrupted) != 0 || g.ver(i).Load() <= v {
		t.Fatalf("after run: interrupted %q, page version %d→%d", r.Interrupted, v, g.ver(i).Load())
	}
}

func TestResumeWithoutVerifyStillChecksIntents(t *testing.T) {
	g, ram := dbGuest(t)
	i := int64(6)
	v := g.ver(i).Load()
	g.writeData(i, 3) // content and table written, counter not
	stats := filepath.Join(filepath.Dir(ram), "stats")
	o := RunOptions{Duration: 100 * time.Millisecond, StatsFile: stats, SkipResumeVerify: true}
	if err := Start(context.Background(), Config{RAM: []string{ram}, Resume: true, Run: o}); err != nil {
		t.Fatal(err)
	}
	if s, err := ReadStats(stats); err != nil || !s.Resumed || s.VerifiedPages != 0 || s.Writes == 0 {
		t.Fatalf("stats %+v, %v: want a resumed run with nothing verified up front", s, err)
	}
	if r := mustVerify(t, ram); g.ver(i).Load() <= v || len(r.Interrupted) != 0 {
		t.Fatalf("interrupted write not finished: version %d→%d, %q", v, g.ver(i).Load(), r.Interrupted)
	}

	g.writeData(i, 1)
	g.h.store(offIntentPage, 1<<40)
	err := Start(context.Background(), Config{RAM: []string{ram}, Resume: true, Run: o})
	var me *MismatchError
	if !errors.As(err, &me) || me.Report.Mismatches[0].Region != "header" {
		t.Fatalf("resume with a write intent naming no page: %v", err)
	}
}
