package keeper

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

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

// A starting serve takes a session's lock up to lockTries more times,
// lockRetry apart, before it leaves the session to the serve that holds it.
const (
	lockTries = 5
	lockRetry = 10 * time.Millisecond
)

// Reclaimed is what Reclaim found that a starting serve takes over.
type Reclaimed struct {
	// Orphans wait for adoption.
	Orphans []Orphan
	// Completed are the journals of sessions that completed: every page
	// was in place and the guest ran on its own. A source whose link
	// failed as the Complete went out learns it from the serve that
	// reads them, not from the one that died.
	Completed []*Journal
}

// Reclaim looks at every session directory under root, as a starting
// serve does: a directory whose guest is gone is removed, a guest that
// never resumed is killed and its directory removed, a completed guest's
// directory is left to its keeper (and its journal returned), one whose
// serve died as it released the guest (Placed) is released and returned
// as completed, and a guest in post-copy is returned for adoption. What it removed is logged.
// Directories another serve holds are left alone.
func Reclaim(root string, log hclog.Logger) (Reclaimed, error) {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	var out Reclaimed
	ents, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return out, fmt.Errorf("reclaim sessions in %s: %w", root, err)
	}
	for _, e := range ents {
		if _, err := wire.ParseSessionID(e.Name()); err != nil || !e.IsDir() {
			continue // not a session directory
		}
		dir := filepath.Join(root, e.Name())
		o, j, err := reclaim(dir, log.With("dir", dir))
		if err != nil {
			log.Warn("reclaim session directory", "dir", dir, "error", err)
		}
		if o != nil {
			out.Orphans = append(out.Orphans, *o)
		}
		if j != nil && j.State == Completed {
			out.Completed = append(out.Completed, j)
		}
	}
	return out, nil
}

// reclaim deals with one session directory; it returns the journal it
// read, if any, and the orphan to adopt, if the session is one.
func reclaim(dir string, log hclog.Logger) (*Orphan, *Journal, error) {
	lock, err := Lock(dir)
	for try := 0; errors.Is(err, ramfile.ErrLocked) && try < lockTries; try++ {
		// A keeper looks whether the lock is free by taking it for an
		// instant: only a lock held throughout is a live serve's.
		time.Sleep(lockRetry)
		lock, err = Lock(dir)
	}
	if errors.Is(err, ramfile.ErrLocked) {
		return nil, nil, nil // a live serve runs it
	}
	if err != nil {
		return nil, nil, err
	}
	j, err := ReadJournal(dir)
	if err != nil {
		lock.Close()
		log.Info("removing a session directory without a journal", "error", err)
		return nil, nil, removeDir(dir)
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
		return nil, j, removeDir(dir)
	case j.State == Placed:
		defer lock.Close()
		if err := finishPlaced(dir, j); err != nil {
			// Every page is in place: the session completed, though a
			// fault on a hole would wait for ever.
			j.State = Completed
			return nil, j, err
		}
		log.Info("found a session whose serve died as it released a complete guest: released it; the guest runs on its own", "session", j.Session, "pid", j.Pid)
		return nil, j, nil
	case j.State == Completed:
		lock.Close()
		log.Info("found a completed session whose serve died: its guest runs on its own", "session", j.Session, "pid", j.Pid)
		return nil, j, nil
	case j.State == Resumed || j.State == Ready:
		log.Info("found a guest past Ready whose serve died: adopting it", "session", j.Session, "state", j.State, "pid", j.Pid)
		return &Orphan{Dir: dir, Journal: j, Lock: lock}, j, nil
	default:
		log.Warn("killing a guest that never resumed, left by a serve that died", "session", j.Session, "pid", j.Pid)
		kerr := p.Kill()
		lock.Close()
		return nil, j, errors.Join(kerr, removeDir(dir))
	}
}
