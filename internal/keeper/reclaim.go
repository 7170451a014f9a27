package keeper

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hashicorp/go-hclog"

	"github.com/dmig/dmig/internal/ramfile"
	"github.com/dmig/dmig/wire"
)

// Orphan is a session past Ready whose serve died: its guest waits on its
// kept userfaultfd (or, at Ready, stopped) for a serve to adopt it. Lock is held: the caller
// owns the session now and closes Lock when done with it.
type Orphan struct {
	Dir     string
	Journal *Journal
	Lock    *os.File
}

// Reclaim looks at every session directory under root, as a starting
// serve does: a directory whose guest is gone is removed, a guest that
// never resumed is killed and its directory removed, a completed guest's
// directory is left to its keeper, and a guest in post-copy is returned
// for adoption. What it removed is logged. Directories another serve holds
// are left alone.
func Reclaim(root string, log hclog.Logger) ([]Orphan, error) {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	ents, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reclaim sessions in %s: %w", root, err)
	}
	var out []Orphan
	for _, e := range ents {
		if _, err := wire.ParseSessionID(e.Name()); err != nil || !e.IsDir() {
			continue // not a session directory
		}
		dir := filepath.Join(root, e.Name())
		o, err := reclaim(dir, log.With("dir", dir))
		if err != nil {
			log.Warn("reclaim session directory", "dir", dir, "error", err)
			continue
		}
		if o != nil {
			out = append(out, *o)
		}
	}
	return out, nil
}

func reclaim(dir string, log hclog.Logger) (*Orphan, error) {
	lock, err := Lock(dir)
	if errors.Is(err, ramfile.ErrLocked) {
		return nil, nil // a live serve runs it
	}
	if err != nil {
		return nil, err
	}
	j, err := ReadJournal(dir)
	if err != nil {
		lock.Close()
		log.Info("removing a session directory without a journal", "error", err)
		return nil, removeDir(dir)
	}
	alive := false
	var p *Process
	if j.Pid > 0 {
		if p, err = Open(j.Pid, j.PidStart); err == nil {
			alive = !p.Exited(0)
			defer p.Close()
		}
	}
	switch {
	case !alive:
		lock.Close()
		log.Info("removing the session directory of a guest that is gone", "session", j.Session, "state", j.State, "pid", j.Pid)
		return nil, removeDir(dir)
	case j.State == Completed:
		lock.Close()
		return nil, nil
	case j.State == Resumed || j.State == Ready:
		log.Info("found a guest past Ready whose serve died: adopting it", "session", j.Session, "state", j.State, "pid", j.Pid)
		return &Orphan{Dir: dir, Journal: j, Lock: lock}, nil
	default:
		log.Warn("killing a guest that never resumed, left by a serve that died", "session", j.Session, "pid", j.Pid)
		kerr := p.Kill()
		lock.Close()
		return nil, errors.Join(kerr, removeDir(dir))
	}
}
