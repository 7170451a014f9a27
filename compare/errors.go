package compare

import "errors"

var (
	// ErrMode: a mode the comparison does not know.
	ErrMode = errors.New("unknown comparison mode")
	// ErrCheck: the check command failed to run or exited non-zero.
	ErrCheck = errors.New("check command failed")
	// ErrTimeout: a migration took longer than Config.Timeout.
	ErrTimeout = errors.New("migration timed out")
	// ErrShape: the loopback could not be shaped (tc missing, not root).
	ErrShape = errors.New("shape the loopback")
	// ErrWorkloadEnded: the workload exited during the comparison.
	ErrWorkloadEnded = errors.New("workload ended")
	// ErrBuggyQEMU: QEMU's own modes asked of a TCG VM on a QEMU older than
	// 9.0, whose pre-copy loses pages (Config.AllowBuggyQEMU forces it).
	ErrBuggyQEMU = errors.New("qemu loses pages of a TCG guest in its own migration")
	// ErrQEMUVersion: Config.QEMUBinary is not the source VM's QEMU.
	ErrQEMUVersion = errors.New("destination qemu is not the source's version")
	// ErrPlotFormat: a plot path whose extension is neither .png nor .svg.
	ErrPlotFormat = errors.New("unknown plot format")
)
