package guest

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// loopFS is an ext4 file system in an image file, mounted through a loop
// device: the image plays a VM's disk on shared storage.
type loopFS struct {
	image string // the image file
	dev   string // /dev/loopN
	dir   string // mount point
}

// newLoopFS makes and mounts a loopFS of size bytes under dir. Cleanup
// unmounts and detaches it, also when the test fails.
func newLoopFS(t testing.TB, dir string, size int64) *loopFS {
	t.Helper()
	for _, tool := range []string{"mkfs.ext4", "losetup", "mount", "umount"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: the test needs e2fsprogs and util-linux (see .ci/run)", tool)
		}
	}
	fs := &loopFS{image: filepath.Join(dir, "disk.img"), dir: filepath.Join(dir, "mnt")}
	if err := os.WriteFile(fs.image, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(fs.image, size); err != nil {
		t.Fatal(err)
	}
	run(t, "mkfs.ext4", "-q", "-F", "-b", "4096", fs.image)
	fs.dev = strings.TrimSpace(run(t, "losetup", "--find", "--show", fs.image))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", fs.dev).CombinedOutput(); err != nil {
			t.Errorf("detach %s: %v: %s", fs.dev, err, out)
		}
	})
	if err := os.MkdirAll(fs.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	run(t, "mount", fs.dev, fs.dir)
	t.Cleanup(func() {
		if out, err := exec.Command("umount", fs.dir).CombinedOutput(); err != nil {
			t.Errorf("unmount %s: %v: %s", fs.dir, err, out)
			exec.Command("umount", "-l", fs.dir).Run()
		}
	})
	return fs
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// mariaDB is a private MariaDB server with its datadir on a loopFS.
type mariaDB struct {
	fs   *loopFS
	dir  string // scratch: socket, pid file, logs, key file
	sock string
	dsn  string
	cmd  *exec.Cmd
	db   *sql.DB
}

// startMariaDB installs and starts a server with a 256 MiB buffer pool and
// the file_key_management plugin (so tables can be encrypted). Cleanup stops
// it before the file system goes.
func startMariaDB(t testing.TB) *mariaDB {
	t.Helper()
	for _, tool := range []string{"mariadbd", "mariadb-install-db", "sysbench"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: the test needs mariadb-server and sysbench (see .ci/run)", tool)
		}
	}
	// World-traversable, so that the agent run as nobody reaches the socket
	// and fails where it should: at the server's memory.
	dir, err := os.MkdirTemp("", "dmig-guest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	m := &mariaDB{dir: dir, sock: filepath.Join(dir, "mysqld.sock")}
	m.fs = newLoopFS(t, dir, 1<<30)
	datadir := filepath.Join(m.fs.dir, "data")
	keys := filepath.Join(dir, "keys.txt")
	if err := os.WriteFile(keys, []byte("1;a7addd9adea9978fda19f21e6be987880e68ac92632ca052e5bb42b1a506939a\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, "mariadb-install-db", "--no-defaults", "--datadir="+datadir, "--user=root",
		"--auth-root-authentication-method=normal", "--skip-test-db")

	m.cmd = exec.Command("mariadbd", "--no-defaults",
		"--datadir="+datadir, "--socket="+m.sock, "--pid-file="+filepath.Join(dir, "mysqld.pid"),
		"--user=root", "--skip-networking", "--log-error="+filepath.Join(dir, "error.log"),
		"--innodb-buffer-pool-size=256M", "--innodb-log-file-size=256M",
		"--innodb-flush-log-at-trx-commit=2", "--innodb-buffer-pool-load-at-startup=OFF",
		"--innodb-buffer-pool-dump-at-shutdown=OFF",
		"--plugin-load-add=file_key_management", "--file-key-management-filename="+keys)
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // no orphan if the test binary dies
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { m.cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		m.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			m.cmd.Process.Kill()
			<-exited
		}
	})
	m.dsn = fmt.Sprintf("root@unix(%s)/", m.sock)
	m.db, err = openDB(m.dsn + "?multiStatements=true")
	if err != nil {
		t.Fatal(err)
	}
	m.db.SetMaxOpenConns(4)
	t.Cleanup(func() { m.db.Close() })
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := m.db.Ping()
		if err == nil {
			break
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Fatalf("mariadbd exited: %s", log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("mariadbd does not answer: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return m
}

func (m *mariaDB) exec(t testing.TB, q string, args ...any) {
	t.Helper()
	if _, err := m.db.Exec(q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

func (m *mariaDB) queryInt(t testing.TB, q string, args ...any) int64 {
	t.Helper()
	var v sql.NullInt64
	if err := m.db.QueryRow(q, args...).Scan(&v); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return v.Int64
}

// sysbench runs a sysbench command against the server.
func (m *mariaDB) sysbench(ctx context.Context, args ...string) *exec.Cmd {
	args = append([]string{"--mysql-socket=" + m.sock, "--mysql-user=root", "--mysql-db=sbtest"}, args...)
	return exec.CommandContext(ctx, "sysbench", args...)
}

// settle stops background statistics, flushes every dirty page and waits
// until none is left and purge is done.
func (m *mariaDB) settle(t testing.TB) {
	t.Helper()
	m.exec(t, "SET GLOBAL innodb_stats_auto_recalc = OFF")
	m.exec(t, "SET GLOBAL innodb_max_dirty_pages_pct_lwm = 0")
	m.exec(t, "SET GLOBAL innodb_max_dirty_pages_pct = 0")
	deadline := time.Now().Add(90 * time.Second)
	quiet := 0
	for quiet < 3 {
		var name string
		var dirty int64
		if err := m.db.QueryRow("SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_pages_dirty'").Scan(&name, &dirty); err != nil {
			t.Fatal(err)
		}
		var history int64
		if err := m.db.QueryRow("SHOW GLOBAL STATUS LIKE 'Innodb_history_list_length'").Scan(&name, &history); err != nil {
			t.Fatal(err)
		}
		if dirty == 0 && history == 0 {
			quiet++
		} else {
			quiet = 0
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d pages still dirty, history length %d after 90 s", dirty, history)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
