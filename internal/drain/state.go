package drain

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// Moved records a guest the drain moved.
type Moved struct {
	To      string    `json:"to"`
	MovedAt time.Time `json:"moved_at"`
}

// state is the state file's content.
type state struct {
	Moved map[string]Moved `json:"moved"`
}

// flock opens (creating) path and takes an exclusive lock on it; with wait
// false a held lock is ErrLocked. Closing the file releases the lock, and
// the kernel releases it if the process dies.
func flock(path string, wait bool) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	how := unix.LOCK_EX
	if !wait {
		how |= unix.LOCK_NB
	}
	for {
		err = unix.Flock(int(f.Fd()), how)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("lock %s: %w", path, ErrLocked)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return f, nil
}

// readState reads the state file; a missing file is an empty state.
func readState(path string) (state, error) {
	st := state{Moved: map[string]Moved{}}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("read state %s: %w", path, err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("parse state %s: %w", path, err)
	}
	if st.Moved == nil {
		st.Moved = map[string]Moved{}
	}
	return st, nil
}

// movedAlready reports whether the state file says name was moved.
func movedAlready(path, name string) (bool, error) {
	unlock, err := lockState(path)
	if err != nil {
		return false, err
	}
	defer unlock()
	st, err := readState(path)
	if err != nil {
		return false, err
	}
	_, ok := st.Moved[name]
	return ok, nil
}

// recordMoved adds name to the state file.
func recordMoved(path, name string, m Moved) error {
	unlock, err := lockState(path)
	if err != nil {
		return err
	}
	defer unlock()
	st, err := readState(path)
	if err != nil {
		return err
	}
	st.Moved[name] = m
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return writeAtomic(path, append(b, '\n'))
}

// lockState serializes state updates of every drain sharing the file.
func lockState(path string) (func(), error) {
	f, err := flock(path+".lock", true)
	if err != nil {
		return nil, err
	}
	return func() { f.Close() }, nil
}

// writeAtomic replaces path with b by writing a temporary file beside it,
// syncing it and renaming it over path.
func writeAtomic(path string, b []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("sync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("replace %s: %w", path, err)
	}
	return nil
}
