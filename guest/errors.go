package guest

import "errors"

var (
	// ErrNoServer: nothing answers at the DSN (no socket, connection refused).
	ErrNoServer = errors.New("no database server answering")
	// ErrAccessDenied: the server refused the credentials.
	ErrAccessDenied = errors.New("database access denied")
	// ErrNoProcess: the server's process cannot be found on this machine.
	ErrNoProcess = errors.New("database server process not found")
	// ErrPermission: the agent may not read the server's memory or page
	// frames. It must run as root (CAP_SYS_PTRACE for /proc/PID/mem,
	// CAP_SYS_ADMIN for the frame numbers in /proc/PID/pagemap).
	ErrPermission = errors.New("permission denied: the guest agent must run as root")
	// ErrNoPFN: the pagemap hides frame numbers (reads them as 0): the
	// agent lacks CAP_SYS_ADMIN.
	ErrNoPFN = errors.New("pagemap hides page frame numbers: the guest agent must run as root (CAP_SYS_ADMIN)")
	// ErrNoBufferPool: no mapping of the server looks like its buffer pool.
	ErrNoBufferPool = errors.New("buffer pool mapping not found")
	// ErrNotSupported: the file system or kernel lacks a call the agent needs.
	ErrNotSupported = errors.New("not supported")
	// ErrUnsupportedFS: FIEMAP offsets on this file system are not device offsets.
	ErrUnsupportedFS = errors.New("unsupported file system")
	// ErrUnsupportedDevice: the file system sits on a stacked device.
	ErrUnsupportedDevice = errors.New("unsupported block device")
	// ErrNotLoopback: a TCP listen address others than the guest itself
	// could reach.
	ErrNotLoopback = errors.New("layouts are served to the host only")
)
