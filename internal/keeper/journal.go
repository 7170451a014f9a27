package keeper

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/dmig/dmig/internal/ramfile"
	"github.com/dmig/dmig/wire"
)

// State is where a session stands, as its journal records it.
type State string

const (
	// Starting: the guest was started and has not been resumed. A dead
	// serve's keeper kills it.
	Starting State = "starting"
	// Ready: written before Ready is sent; the source may send Go from
	// then on, so a session whose serve died here is kept for adoption
	// like a resumed one (its guest has not run yet).
	Ready State = "ready"
	// Resumed: written before the guest is resumed; the guest may run and
	// fault on pages still owed by the source.
	Resumed State = "resumed"
	// Placed: every page is in place and serve is releasing the guest's
	// RAM from the kept userfaultfd. A serve that dies here leaves a
	// complete guest whose RAM may still be registered, so that a fault
	// on a page never sent (a zero page left a hole) would wait for ever:
	// whoever finds it (its keeper, a starting serve) finishes the
	// release (Release) and journals Completed.
	Placed State = "placed"
	// Completed: every page is in place and the RAM released; the guest is
	// on its own.
	Completed State = "completed"
)

// rank orders the states a session goes through.
func (s State) rank() int {
	switch s {
	case Starting:
		return 1
	case Ready:
		return 2
	case Resumed:
		return 3
	case Placed:
		return 4
	case Completed:
		return 5
	}
	return 0
}

// Later returns the later of two states.
func Later(a, b State) State {
	if b.rank() > a.rank() {
		return b
	}
	return a
}

// File names inside a session directory.
const (
	JournalName = "journal.json"
	LockName    = "session.lock"
)

// Journal is the record of one session, kept in its directory.
type Journal struct {
	Session wire.SessionID `json:"session"`
	Guest   string         `json:"guest"`
	State   State          `json:"state"`
	// Pid and PidStart name the destination guest (0 before it starts).
	Pid      int    `json:"pid,omitempty"`
	PidStart uint64 `json:"pid_start,omitempty"`
	// UffdFD is the number of the userfaultfd kept open in the guest
	// (-1: none).
	UffdFD int `json:"uffd_fd"`
	// ResumeBySignal: the guest resumes on SIGCONT (a process guest), so
	// one adopted at Ready can be resumed by whoever adopts it.
	ResumeBySignal bool `json:"resume_by_signal,omitempty"`
	// Paths are the RAM files, in block order.
	Paths   []string   `json:"paths"`
	Hello   wire.Hello `json:"hello"`
	Updated time.Time  `json:"updated"`
}

// Write replaces the journal in dir atomically (write, then rename).
func (j *Journal) Write(dir string) error {
	j.Updated = time.Now().UTC()
	b, err := json.MarshalIndent(j, "", "  ")
	if err != nil {
		return fmt.Errorf("encode journal of session %s: %w", j.Session, err)
	}
	tmp := filepath.Join(dir, JournalName+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write journal of session %s: %w", j.Session, err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, JournalName)); err != nil {
		return fmt.Errorf("write journal of session %s: %w", j.Session, err)
	}
	return nil
}

// ReadJournal reads the journal in dir. A directory without one wraps
// os.ErrNotExist.
func ReadJournal(dir string) (*Journal, error) {
	b, err := os.ReadFile(filepath.Join(dir, JournalName))
	if err != nil {
		return nil, fmt.Errorf("read journal in %s: %w", dir, err)
	}
	var j Journal
	if err := json.Unmarshal(b, &j); err != nil {
		return nil, fmt.Errorf("read journal in %s: %w", dir, err)
	}
	return &j, nil
}

// Lock takes the session's lock in dir without waiting: whoever holds it
// runs the session. Close the file to release it. A lock held elsewhere
// wraps ramfile.ErrLocked.
func Lock(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, LockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open session lock: %w", err)
	}
	if err := ramfile.Lock(f); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// lockFree reports whether nobody holds the session's lock in dir.
func lockFree(dir string) bool {
	f, err := Lock(dir)
	if err != nil {
		return !errors.Is(err, ramfile.ErrLocked)
	}
	f.Close()
	return true
}
