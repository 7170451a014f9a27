package keeper

import (
	"errors"
	"fmt"
	"os"

	"github.com/dmig/dmig/internal/ramfile"
	"github.com/dmig/dmig/uffd"
)

// Release finishes what a serve that died at Placed left undone: it takes
// a copy of the userfaultfd kept in the guest and unregisters every
// mapping the guest has of its RAM files, so that the guest, whose every
// page is in place, never waits on a fault nobody reads again. Unregistering
// a range twice does nothing, so a release that already happened is
// harmless. The caller holds the session's lock and journals Completed
// after.
func Release(j *Journal) error {
	if j.UffdFD < 0 {
		return nil // nothing was kept, so nothing is registered
	}
	u, err := uffd.Reacquire(j.Pid, j.UffdFD, uffd.FeatureMissingShmem)
	if err != nil {
		return fmt.Errorf("release guest pid %d of session %s: %w", j.Pid, j.Session, err)
	}
	defer u.Close()
	var errs []error
	for _, path := range j.Paths {
		errs = append(errs, unregisterFile(u, j.Pid, path))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("release guest pid %d of session %s: %w", j.Pid, j.Session, err)
	}
	return nil
}

// unregisterFile unregisters pid's mappings of the RAM file at path.
func unregisterFile(u *uffd.FD, pid int, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open RAM file: %w", err)
	}
	defer f.Close()
	ms, err := ramfile.FileMappingsOf(pid, f)
	if err != nil {
		return fmt.Errorf("find the guest's mappings of %s: %w", path, err)
	}
	for _, m := range ms {
		if err := u.Unregister(uffd.Range{Start: m.Start, Len: m.Len()}); err != nil {
			return fmt.Errorf("unregister the guest's mapping of %s: %w", path, err)
		}
	}
	return nil
}

// finishPlaced releases a session left at Placed and journals it
// Completed; the caller holds its lock.
func finishPlaced(dir string, j *Journal) error {
	if err := Release(j); err != nil {
		return err
	}
	j.State = Completed
	return j.Write(dir)
}
