package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// List reads every control socket in dir and returns their entries, by
// process then entry. Sockets of dead processes are removed; one that does
// not answer is skipped with its error joined into the returned one (the
// entries of the others are returned all the same). A missing dir lists
// nothing.
func List(ctx context.Context, dir string) ([]Entry, error) {
	des, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		// Most likely not root: the directory is root's, mode 0700.
		return nil, fmt.Errorf("list control sockets: %w", err)
	}
	var paths []string
	for _, de := range des {
		if strings.HasSuffix(de.Name(), ".sock") {
			paths = append(paths, filepath.Join(dir, de.Name()))
		}
	}
	sort.Strings(paths)
	var out []Entry
	var errs []error
	for _, p := range paths {
		resp, err := ask(ctx, p, request{Op: "status"})
		switch {
		case errors.Is(err, errStale):
			continue
		case err != nil:
			errs = append(errs, err)
			continue
		case resp.Error != "":
			errs = append(errs, fmt.Errorf("control socket %s: %s", p, resp.Error))
			continue
		}
		out = append(out, resp.Entries...)
	}
	return out, errors.Join(errs...)
}

// sweep removes the stale sockets in dir, bounded by ioTimeout.
func sweep(dir string) {
	paths, _ := filepath.Glob(filepath.Join(dir, "*.sock"))
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	for _, p := range paths {
		var d net.Dialer
		if c, err := d.DialContext(ctx, "unix", p); err == nil {
			c.Close()
		} else if errors.Is(err, syscall.ECONNREFUSED) {
			_ = os.Remove(p)
		}
	}
}

// errStale: the socket's process is gone (the socket was removed).
var errStale = errors.New("stale control socket")

// ask sends one request to the socket at path and reads the answer.
func ask(ctx context.Context, path string, req request) (response, error) {
	ctx, cancel := context.WithTimeout(ctx, ioTimeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if errors.Is(err, syscall.ECONNREFUSED) {
		// Nothing listens: a visible socket always listened (Listen
		// renames it into place), so its process is dead.
		if rerr := os.Remove(path); rerr == nil || errors.Is(rerr, os.ErrNotExist) {
			return response{}, errStale
		}
	}
	if errors.Is(err, os.ErrNotExist) {
		return response{}, errStale
	}
	if err != nil {
		return response{}, fmt.Errorf("control socket %s: %w", path, err)
	}
	defer c.Close()
	dl, _ := ctx.Deadline()
	_ = c.SetDeadline(dl)
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return response{}, fmt.Errorf("control socket %s: send %s: %w", path, req.Op, err)
	}
	var resp response
	if err := json.NewDecoder(c).Decode(&resp); err != nil {
		return response{}, fmt.Errorf("control socket %s: read answer to %s: %w", path, req.Op, err)
	}
	return resp, nil
}

// Match returns the entries name designates: those whose guest, other
// name or session ID (or a prefix of it of at least 8 digits) is name.
func Match(entries []Entry, name string) []Entry {
	var out []Entry
	for _, e := range entries {
		if e.matches(name) {
			out = append(out, e)
		}
	}
	return out
}

func (e Entry) matches(name string) bool {
	if name == e.Guest || (len(name) >= 8 && e.Session != "" && strings.HasPrefix(e.Session, strings.ToLower(name))) {
		return true
	}
	for _, n := range e.Names {
		if n == name {
			return true
		}
	}
	return false
}

// RefusedError is a cancel or set-bandwidth the migration refused.
type RefusedError struct {
	Op     string // what was refused: "" for cancel
	Entry  Entry
	Reason string
}

func (e *RefusedError) Error() string {
	op := e.Op
	if op == "" {
		op = "cancel"
	}
	return fmt.Sprintf("%s %s (%s): refused: %s", op, e.Entry.Guest, e.Entry.Role, e.Reason)
}

// Cancel asks the migration of entry e to abort, with reason (may be
// empty). It returns once the migration accepted (it then aborts on its
// own: Wait for it), or a *RefusedError.
func Cancel(ctx context.Context, e Entry, reason string) (Entry, error) {
	resp, err := ask(ctx, e.Socket, request{Op: "cancel", ID: e.ID, Reason: reason})
	if errors.Is(err, errStale) {
		return e, fmt.Errorf("cancel %s: %w: its process is gone", e.Guest, ErrNotFound)
	}
	if err != nil {
		return e, fmt.Errorf("cancel %s: %w", e.Guest, err)
	}
	if resp.Refused {
		if len(resp.Entries) == 1 {
			e = resp.Entries[0]
		}
		return e, &RefusedError{Entry: e, Reason: resp.Error}
	}
	if resp.Error != "" {
		return e, fmt.Errorf("cancel %s: %s", e.Guest, resp.Error)
	}
	if len(resp.Entries) == 1 {
		e = resp.Entries[0]
	}
	return e, nil
}

// SetBandwidth changes the cap of entry e's migration to rate bytes/s
// (0: none) and returns its entry after the change, or a *RefusedError
// (it ended, or has no cap here).
func SetBandwidth(ctx context.Context, e Entry, rate uint64) (Entry, error) {
	resp, err := ask(ctx, e.Socket, request{Op: "set-bandwidth", ID: e.ID, Rate: rate})
	if errors.Is(err, errStale) {
		return e, fmt.Errorf("set the bandwidth of %s: %w: its process is gone", e.Guest, ErrNotFound)
	}
	if err != nil {
		return e, fmt.Errorf("set the bandwidth of %s: %w", e.Guest, err)
	}
	if len(resp.Entries) == 1 {
		e = resp.Entries[0]
	}
	if resp.Refused {
		return e, &RefusedError{Op: "set the bandwidth of", Entry: e, Reason: resp.Error}
	}
	if resp.Error != "" {
		return e, fmt.Errorf("set the bandwidth of %s: %s", e.Guest, resp.Error)
	}
	return e, nil
}

// SetTotal changes the total cap of the drain process pid listening in dir
// to rate bytes/s (0: none) and returns the cap it had.
func SetTotal(ctx context.Context, dir string, pid int, rate uint64) (uint64, error) {
	path := filepath.Join(dir, fmt.Sprintf("drain-%d.sock", pid))
	resp, err := ask(ctx, path, request{Op: "set-bandwidth", Total: true, Rate: rate})
	if errors.Is(err, errStale) {
		return 0, fmt.Errorf("set the total bandwidth of drain %d: %w: no drain of that pid (in %s)", pid, ErrNotFound, dir)
	}
	if err != nil {
		return 0, fmt.Errorf("set the total bandwidth of drain %d: %w", pid, err)
	}
	if resp.Error != "" {
		return 0, fmt.Errorf("set the total bandwidth of drain %d: %s", pid, resp.Error)
	}
	return resp.From, nil
}

// Wait polls entry e until its migration ended and returns its last
// entry, or ok false if its process went away first (a migrate exits when
// its migration ends).
func Wait(ctx context.Context, e Entry, every time.Duration) (last Entry, ok bool, err error) {
	for {
		resp, err := ask(ctx, e.Socket, request{Op: "status"})
		if errors.Is(err, errStale) {
			return e, false, nil
		}
		if err != nil {
			return e, false, err
		}
		found := false
		for _, x := range resp.Entries {
			if x.ID == e.ID {
				e, found = x, true
			}
		}
		if !found {
			return e, false, nil
		}
		if e.Outcome != "" {
			return e, true, nil
		}
		select {
		case <-ctx.Done():
			return e, false, fmt.Errorf("wait for %s to end: %w", e.Guest, ctx.Err())
		case <-time.After(every):
		}
	}
}
