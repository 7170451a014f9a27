package qemu

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/dmig/dmig/dbrestore"
	"github.com/dmig/dmig/internal/ramfile"
	"github.com/dmig/dmig/internal/report"
	"github.com/dmig/dmig/internal/testvm"
	"github.com/dmig/dmig/layout"
	"github.com/dmig/dmig/precopy"
	"github.com/dmig/dmig/wire"
)

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// waitSQL waits for MariaDB in the guest to answer on host port port.
func waitSQL(ctx context.Context, t *testing.T, port int) *sql.DB {
	t.Helper()
	return testvm.WaitSQL(ctx, t, fmt.Sprintf("127.0.0.1:%d", port))
}

// checksums returns CHECKSUM TABLE of every sysbench table.
func checksums(ctx context.Context, t *testing.T, db *sql.DB) string {
	t.Helper()
	rows, err := db.QueryContext(ctx, "CHECKSUM TABLE sbtest1, sbtest2")
	if err != nil {
		t.Fatalf("checksum tables: %v", err)
	}
	defer rows.Close()
	var b strings.Builder
	for rows.Next() {
		var name string
		var sum sql.NullInt64
		if err := rows.Scan(&name, &sum); err != nil {
			t.Fatal(err)
		}
		if !sum.Valid {
			t.Fatalf("table %s has no checksum (missing?)", name)
		}
		fmt.Fprintf(&b, "%s=%d ", name, sum.Int64)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// running is a VM under test and where it answers.
type running struct {
	vm   *VM
	port int
	args []string
	// agent: the guest agent's socket, the first VM's from its Config,
	// a destination's where DestArgs puts the agent0 chardev's socket.
	agent string
	// mem: the RAM file of a destination this test made ("" for the
	// others), removed once the VM has quit.
	mem string
}

// movedAgent is where a destination started with DestArgs in dir has the
// guest agent's socket: in dir, named after its chardev (vm.go's agent0).
func movedAgent(dir string) string { return filepath.Join(dir, "agent0.sock") }

// destination starts a destination of src with -incoming defer and -S
// (paused after the migration, for the RAM oracle), its RAM in memPath and
// MariaDB forwarded to a new port. The VM lives until owner (the whole
// test: it outlives the subtest that migrates to it) ends.
func destination(ctx context.Context, t, owner *testing.T, src *running, dir, memPath string) *running {
	t.Helper()
	bin, args, err := SourceCommand(src.vm.Pid())
	if err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	plan, err := DestArgs(args, DestOptions{Dir: dir, MemPaths: map[string]string{"ram0": memPath}, Ports: map[int]int{src.port: port}})
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckDisks(src.vm.Pid(), args, plan.Args); err != nil {
		t.Fatal(err)
	}
	vm, err := Start(ctx, bin, append(plan.Args, "-S"), plan.QMP, plan.Stderr, true)
	if err != nil {
		t.Fatal(err)
	}
	owner.Cleanup(func() { vm.Kill() })
	return &running{vm: vm, port: port, args: plan.Args, agent: movedAgent(dir), mem: memPath}
}

// copyRAM copies the paused source's RAM file into the destination's,
// skipping zero runs (the destination file is sparse), and returns the
// bytes written.
func copyRAM(t *testing.T, from, to string) int64 {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	buf := make([]byte, 1<<20)
	var off, n int64
	for {
		k, err := src.ReadAt(buf, off)
		chunk := buf[:k]
		if k > 0 && !bytes.Equal(chunk, make([]byte, k)) {
			if _, err := dst.WriteAt(chunk, off); err != nil {
				t.Fatal(err)
			}
			n += int64(k)
		}
		off += int64(k)
		if errors.Is(err, io.EOF) {
			return n
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// cliMigrate runs nc through `dmig qemu migrate`. QEMU serves one QMP
// client at a time, so the test's monitors step aside meanwhile.
func cliMigrate(ctx context.Context, t *testing.T, bin string, src, dst *VM, nc NativeConfig) *NativeResult {
	t.Helper()
	src.Mon.Close()
	dst.Mon.Close()
	args := []string{"qemu", "migrate", "--mode", nc.Mode, "--from", src.QMP, "--to", dst.QMP,
		"--uri", nc.URI, "--postcopy-after", nc.PostcopyAfter.String()}
	if nc.MaxBandwidth > 0 {
		args = append(args, "--bandwidth", fmt.Sprint(nc.MaxBandwidth>>20))
	}
	out, err := exec.CommandContext(ctx, bin, args...).Output()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		t.Fatalf("dmig qemu migrate: %v\n%s", err, ee.Stderr)
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []*VM{src, dst} {
		if v.Mon, err = Dial(ctx, v.QMP); err != nil {
			t.Fatal(err)
		}
	}
	var r report.Report
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("dmig qemu migrate printed %q: %v", out, err)
	}
	// The report counts pages owed at the switch only if QEMU switched.
	return &NativeResult{Report: &r, Postcopy: r.PostcopyPages > 0}
}

// TestQEMU runs testQEMU on each QEMU dmig supports: Debian 12's 7.2 (the
// system's qemu-system-x86_64) and 10 (make qemu10's, or $DMIG_QEMU10).
// A missing one fails its subtest.
func TestQEMU(t *testing.T) {
	for _, q := range testQEMUs(t) {
		t.Run(q.name, func(t *testing.T) {
			if q.bin == "" {
				t.Fatalf("QEMU %s is not installed (%s)", q.name, q.why)
			}
			testQEMU(t, q.bin)
		})
	}
}

type testedQEMU struct{ name, bin, why string }

// testQEMUs finds the QEMU binaries TestQEMU runs on, each checked to be
// of the version its subtest is named after.
func testQEMUs(t *testing.T) []testedQEMU {
	q10 := os.Getenv("DMIG_QEMU10")
	if q10 == "" {
		q10 = QEMU10Binary
	}
	out := []testedQEMU{{name: "7.2", bin: "qemu-system-x86_64"}, {name: "10", bin: q10}}
	for i := range out {
		q := &out[i]
		v, err := BinaryVersion(context.Background(), q.bin)
		switch {
		case err != nil:
			q.bin, q.why = "", err.Error()+"; make qemu10 installs QEMU 10"
		case !strings.HasPrefix(v.String(), q.name+"."):
			q.bin, q.why = "", fmt.Sprintf("%s is QEMU %s", q.bin, v)
		}
	}
	return out
}

// testQEMU boots one guest on the QEMU binary bin and moves it from QEMU
// to QEMU on this host: by device state alone over a shared RAM file
// (x-ignore-shared, what dmig's switchover does), by dmig in each mode,
// then by QEMU's own modes. The database must answer after each with the
// same table checksums and the RAM oracle find no page differing, except
// after a QEMU migration on QEMU 7.2, whose TCG loses pages (the count and
// a guest crash are logged; a crash ends the test, which is why QEMU's
// modes come last).
func testQEMU(t *testing.T, bin string) {
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	version, err := BinaryVersion(ctx, bin)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	img := testvm.BuildImage(t, dir)
	shm := fmt.Sprintf("/dev/shm/dmig-qemu-test-%d-%s-", os.Getpid(), strings.NewReplacer("/", "-", ".", "").Replace(t.Name()))
	t.Cleanup(func() {
		for _, s := range []string{"a", "c", "d", "p"} {
			os.Remove(shm + s)
		}
	})

	port := freePort(t)
	cfg := Config{Dir: filepath.Join(dir, "a"), Image: img.Path, Kernel: img.Kernel, Initrd: img.Initrd,
		MemPath: shm + "a", Forward: []Forward{{port, 3306}}, AgentSocket: filepath.Join(dir, "a", "agent.sock"), Binary: bin, KillWithParent: true}
	start := time.Now()
	vm, err := StartConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Kill() })
	cur := &running{vm: vm, port: port, agent: cfg.AgentSocket}
	db := waitSQL(ctx, t, port)
	t.Logf("boot: mariadb answered %.1f s after qemu started", time.Since(start).Seconds())

	var want string
	ok := t.Run("load", func(t *testing.T) {
		var pool int64
		if err := db.QueryRowContext(ctx, "SELECT @@innodb_buffer_pool_size").Scan(&pool); err != nil {
			t.Fatal(err)
		}
		if pool < 1<<30 {
			t.Fatalf("buffer pool %d bytes, want >= 1 GiB", pool)
		}
		// The image comes with sysbench's tables (build.sh's preload).
		for _, tbl := range []string{"sbtest1", "sbtest2"} {
			var rows int
			if err := db.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+tbl).Scan(&rows); err != nil || rows != 20000 {
				t.Fatalf("table %s: %d rows (%v), want the image's 20000", tbl, rows, err)
			}
		}
		want = checksums(ctx, t, db)
		if _, err := db.ExecContext(ctx, "CREATE TABLE counter (id INT PRIMARY KEY, n BIGINT NOT NULL) ENGINE=InnoDB"); err != nil {
			t.Fatal(err)
		}
		if _, err := db.ExecContext(ctx, "INSERT INTO counter VALUES (1, 0)"); err != nil {
			t.Fatal(err)
		}
	})
	if !ok {
		return
	}

	ok = t.Run("discover", func(t *testing.T) {
		if q, err := QMPSocket(cur.vm.Pid()); err != nil || q != cfg.QMPPath() {
			t.Fatalf("QMPSocket = %q, %v; want %s", q, err, cfg.QMPPath())
		}
		m, err := Discover(ctx, cur.vm.Mon, 0)
		if err != nil {
			t.Fatal(err)
		}
		if m.Pid != cur.vm.Pid() {
			t.Fatalf("pid %d from the qmp socket, qemu is %d", m.Pid, cur.vm.Pid())
		}
		if len(m.Blocks) != 1 {
			t.Fatalf("blocks %+v, want one", m.Blocks)
		}
		b := m.Blocks[0]
		if b.ID != "ram0" || b.Path != shm+"a" || b.Size != 2<<30 || !b.Share || b.Type != "memory-backend-file" {
			t.Fatalf("block %+v", b)
		}
		var mapped uint64
		for _, mp := range b.Mappings {
			if !mp.Shared() {
				t.Fatalf("qemu maps its RAM privately: %+v", mp)
			}
			mapped += uint64(mp.Len())
		}
		if mapped != b.Size {
			t.Fatalf("qemu maps %d bytes of %s, want %d", mapped, b.Path, b.Size)
		}
		// On pc below 3 GiB, RAM is identity-mapped around the ROM hole.
		// The low MiB is split by ROM and PAM windows the firmware sets;
		// everything above it is one range up to the end of RAM.
		var high bool
		for _, r := range b.GPA {
			if r.GPA != r.Offset {
				t.Fatalf("range %+v is not identity", r)
			}
			high = high || (r.GPA <= 1<<20 && r.GPA+r.Len == b.Size)
		}
		if !high {
			t.Fatalf("guest-physical ranges %+v do not cover 1 MiB to the end of RAM", b.GPA)
		}
		if _, off, ok := m.Block(b.Size - 4096); !ok || off != b.Size-4096 {
			t.Fatalf("last RAM page maps to %#x, %v", off, ok)
		}
		// Guest RAM seen through the file is the guest's: the kernel's
		// banner is in it.
		mem, err := os.ReadFile(b.Path)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(mem), "Linux version 6.") {
			t.Fatal("the RAM file does not hold the running kernel")
		}
	})
	if !ok {
		return
	}

	t.Run("guest-agent", func(t *testing.T) {
		// The agent the image starts at boot answers on the virtio-serial
		// port, and its guest-physical layout lands, through Discover's
		// map, on RAM-file pages equal to the disk blocks it names.
		if _, err := db.ExecContext(ctx, "SET GLOBAL innodb_max_dirty_pages_pct = 0"); err != nil {
			t.Fatal(err)
		}
		var lay *layout.Layout
		for lay == nil || lay.Pages() == 0 {
			c, err := net.Dial("unix", cfg.AgentSocket)
			if err == nil {
				rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
				lay, err = layout.Request(rctx, c, true)
				cancel()
				c.Close()
			}
			if ctx.Err() != nil {
				t.Fatalf("no layout from the guest agent: %v", err)
			}
			if lay == nil || lay.Pages() == 0 {
				time.Sleep(2 * time.Second)
			}
		}
		if len(lay.Disks) != 1 || lay.Disks[0].Name != "vda" {
			t.Fatalf("layout disks %+v, want vda", lay.Disks)
		}
		src, err := newSource(ctx, cur.vm.Mon)
		if err != nil {
			t.Fatal(err)
		}
		m := src.Machine()
		if err := cur.vm.Mon.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		defer cur.vm.Mon.Cont(ctx)
		ram, err := os.Open(m.Blocks[0].Path)
		if err != nil {
			t.Fatal(err)
		}
		defer ram.Close()
		disk, err := os.Open(img.Path)
		if err != nil {
			t.Fatal(err)
		}
		defer disk.Close()
		var refs []layout.Ref
		lay.Each(func(r layout.Ref) bool { refs = append(refs, r); return true })
		step := max(1, len(refs)/500)
		var same, n int
		a, b := make([]byte, layout.PageSize), make([]byte, layout.PageSize)
		for i := 0; i < len(refs); i += step {
			blk, off, ok := src.Translate(refs[i].GuestPage * layout.PageSize)
			if !ok || blk != "ram0" {
				t.Fatalf("layout page %#x is not guest RAM (%q, %v)", refs[i].GuestPage, blk, ok)
			}
			if _, err := ram.ReadAt(a, int64(off)); err != nil {
				t.Fatalf("read %s: %v", m.Blocks[0].Path, err)
			}
			if _, err := disk.ReadAt(b, int64(refs[i].Offset)); err != nil {
				t.Fatal(err)
			}
			n++
			if bytes.Equal(a, b) {
				same++
			}
		}
		t.Logf("guest agent: layout of %d pages (%d MiB); %d of %d sampled pages equal their disk blocks", lay.Pages(), lay.Pages()>>8, same, n)
		if same < n*95/100 {
			t.Fatalf("only %d of %d sampled layout pages equal their disk blocks", same, n)
		}
	})

	t.Run("private-ram-refused", func(t *testing.T) {
		pc := Config{Dir: filepath.Join(dir, "p"), Image: img.Path, Kernel: img.Kernel, Initrd: img.Initrd,
			MemPath: shm + "p", Private: true, Incoming: "defer", Binary: bin, KillWithParent: true}
		p, err := StartConfig(ctx, pc)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Kill()
		_, err = Discover(ctx, p.Mon, 0)
		if !errors.Is(err, ErrNotShared) || !strings.Contains(err.Error(), "share=on") {
			t.Fatalf("Discover on share=off RAM: %v; want ErrNotShared saying how to start QEMU", err)
		}
		// Plain -m, no memory backend at all.
		ld := filepath.Join(dir, "legacy")
		if err := os.MkdirAll(ld, 0o755); err != nil {
			t.Fatal(err)
		}
		l, err := Start(ctx, bin, []string{"-accel", "tcg", "-m", "256M", "-machine", "pc", "-S",
			"-display", "none", "-nodefaults", "-qmp", "unix:" + ld + "/qmp.sock,server=on,wait=off"},
			ld+"/qmp.sock", ld+"/stderr", true)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Kill()
		_, err = Discover(ctx, l.Mon, 0)
		if !errors.Is(err, ErrNotShared) || !strings.Contains(err.Error(), "share=on") {
			t.Fatalf("Discover on -m RAM: %v; want ErrNotShared saying how to start QEMU", err)
		}
		t.Logf("refused: %v", err)
	})

	t.Run("device-ram", func(t *testing.T) {
		// Video RAM is device RAM, not a backend: accepted, and listed
		// apart from the blocks dmig moves. No disk and no kernel: the
		// firmware maps the VGA BAR and finds nothing to boot.
		vd := filepath.Join(dir, "v")
		if err := os.MkdirAll(vd, 0o755); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(shm + "v")
		v, err := Start(ctx, bin, []string{"-accel", "tcg", "-m", "256M",
			"-object", "memory-backend-file,id=ram0,size=256M,mem-path=" + shm + "v,share=on",
			"-machine", "pc,memory-backend=ram0", "-vga", "std", "-display", "none", "-nodefaults",
			"-qmp", "unix:" + vd + "/qmp.sock,server=on,wait=off"}, vd+"/qmp.sock", vd+"/stderr", true)
		if err != nil {
			t.Fatal(err)
		}
		defer v.Kill()
		deadline := time.Now().Add(30 * time.Second)
		for {
			m, err := Discover(ctx, v.Mon, 0)
			if err != nil {
				t.Fatal(err)
			}
			if len(m.Blocks) != 1 || m.Blocks[0].ID != "ram0" {
				t.Fatalf("blocks %+v; want ram0", m.Blocks)
			}
			if slices.Contains(m.DeviceRAM, "vga.vram") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("device RAM %v never listed vga.vram", m.DeviceRAM)
			}
			time.Sleep(500 * time.Millisecond)
		}
	})

	t.Run("memfd", func(t *testing.T) {
		// A memfd backend has no path: dmig reaches it through QEMU's fd.
		md := filepath.Join(dir, "memfd")
		if err := os.MkdirAll(md, 0o755); err != nil {
			t.Fatal(err)
		}
		v, err := Start(ctx, bin, []string{"-accel", "tcg", "-m", "128M",
			"-object", "memory-backend-memfd,id=mem1,size=128M,share=on",
			"-machine", "pc,memory-backend=mem1", "-display", "none", "-nodefaults", "-S",
			"-qmp", "unix:" + md + "/qmp.sock,server=on,wait=off"}, md+"/qmp.sock", md+"/stderr", true)
		if err != nil {
			t.Fatal(err)
		}
		defer v.Kill()
		m, err := Discover(ctx, v.Mon, v.Pid())
		if err != nil {
			t.Fatal(err)
		}
		if len(m.Blocks) != 1 {
			t.Fatalf("blocks %+v", m.Blocks)
		}
		b := m.Blocks[0]
		if b.ID != "mem1" || b.Type != "memory-backend-memfd" || b.Size != 128<<20 || !strings.HasPrefix(b.Path, fmt.Sprintf("/proc/%d/fd/", v.Pid())) {
			t.Fatalf("block %+v", b)
		}
		if len(b.Mappings) == 0 || !b.Mappings[0].Shared() {
			t.Fatalf("mappings %+v", b.Mappings)
		}
	})

	top := t
	ok = t.Run("abort-before-cont", func(t *testing.T) {
		// The destination dies while the source is paused: the source is
		// resumed and answers.
		src, err := newSource(ctx, cur.vm.Mon)
		if err != nil {
			t.Fatal(err)
		}
		tg := &Target{Command: src.DestCommand(), Dir: filepath.Join(dir, "x"), Ports: map[int]int{cur.port: freePort(t)}, SourcePid: src.Pid(), KillWithParent: true}
		paths, err := tg.Create(ctx, []wire.Block{{Name: "ram0", Size: 2 << 30}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tg.Start(ctx); err != nil {
			t.Fatal(err)
		}
		// dbrestore.Guest's contract: the waiting destination has touched
		// none of its RAM (every page is still a hole dmig can fill or
		// register as missing).
		var st unix.Stat_t
		if err := unix.Stat(paths[0], &st); err != nil {
			t.Fatal(err)
		}
		if st.Blocks != 0 {
			t.Fatalf("destination qemu waiting for device state allocated %d KiB of its RAM file", st.Blocks/2)
		}
		if err := src.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		if err := tg.Kill(); err != nil {
			t.Fatal(err)
		}
		if err := src.Resume(ctx); err != nil {
			t.Fatal(err)
		}
		if got := checksums(ctx, t, db); got != want {
			t.Fatalf("source after abort: checksums %s, want %s", got, want)
		}
	})
	if !ok {
		return
	}

	ok = t.Run("ignore-shared", func(t *testing.T) {
		// dmig's switchover: a destination with its own RAM file, filled
		// while the source is paused (here by copying the file, as dmig's
		// page placement would), then only device state moves.
		src, err := newSource(ctx, cur.vm.Mon)
		if err != nil {
			t.Fatal(err)
		}
		port := freePort(t)
		pr, pw := io.Pipe()
		tg := &Target{Command: src.DestCommand(), Dir: filepath.Join(dir, "b"), Ports: map[int]int{cur.port: port}, SourcePid: src.Pid(), KillWithParent: true}
		blocks := src.RAM()
		paths, err := tg.Create(ctx, []wire.Block{{Name: blocks[0].Name, Size: blocks[0].Size}})
		if err != nil {
			t.Fatal(err)
		}
		top.Cleanup(func() { tg.Kill() })
		if _, err := tg.Start(ctx); err != nil {
			t.Fatal(err)
		}
		began := time.Now()
		if err := src.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		copied := copyRAM(t, blocks[0].Path, paths[0])
		sent := make(chan error, 1)
		var info MigrationInfo
		go func() {
			var err error
			info, err = src.DeviceState(ctx, dir, pw)
			pw.CloseWithError(err)
			sent <- err
		}()
		if err := tg.Resume(ctx); err == nil {
			t.Fatal("Resume before the device state loaded let the guest run")
		}
		if err := tg.LoadDeviceState(ctx, pr); err != nil {
			t.Fatal(err)
		}
		if st, _ := tg.VM().Mon.QueryStatus(ctx); st.Status != "paused" {
			t.Fatalf("destination is %q after loading device state, want paused until cont", st.Status)
		}
		if err := tg.Resume(ctx); err != nil {
			t.Fatal(err)
		}
		if err := tg.AfterResume(ctx); err != nil {
			t.Fatal(err)
		}
		ignoreSharedOff(ctx, t, tg.VM().Mon, "the destination after its resume")
		if err := <-sent; err != nil {
			t.Fatal(err)
		}
		t.Logf("x-ignore-shared: guest paused %.0f ms (RAM file copy %d MiB included), %d bytes of RAM in the stream",
			float64(time.Since(began).Microseconds())/1000, copied>>20, info.RAM.Transferred)
		if info.RAM.Transferred > 8<<20 {
			t.Errorf("x-ignore-shared sent %d bytes of RAM: shared RAM was copied", info.RAM.Transferred)
		}
		if st, _ := src.Monitor().QueryStatus(ctx); st.Status != "postmigrate" {
			t.Errorf("source is %q after migration, want postmigrate", st.Status)
		}
		if err := src.Finish(ctx); err != nil {
			t.Fatal(err)
		}
		<-cur.vm.Exited()
		os.Remove(shm + "a")
		cur = &running{vm: tg.VM(), port: port, agent: movedAgent(tg.Dir)}
		ddb := waitSQL(ctx, t, port)
		if got := checksums(ctx, t, ddb); got != want {
			t.Fatalf("checksums at the destination %s, source had %s", got, want)
		}
		// The guest runs: its clock moves and it takes writes.
		uptime := func() int64 {
			var u int64
			if err := ddb.QueryRowContext(ctx, "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME='UPTIME'").Scan(&u); err != nil {
				t.Fatal(err)
			}
			return u
		}
		u1 := uptime()
		time.Sleep(2 * time.Second)
		if u2 := uptime(); u2 <= u1 {
			t.Fatalf("guest uptime %d then %d: not running", u1, u2)
		}
		if _, err := ddb.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS alive (x INT)"); err != nil {
			t.Fatal(err)
		}
	})
	if !ok {
		return
	}

	ok = t.Run("dmig-dest-killed-before-cont", func(t *testing.T) {
		// Through dmig's whole path: the destination QEMU dies as its
		// device-state load begins (guest paused at the source, pages
		// sent): the source must be resumed, its database answering.
		src, err := newSource(ctx, cur.vm.Mon)
		if err != nil {
			t.Fatal(err)
		}
		var tg *Target
		addr, served, _ := dmigDest(ctx, t, func(h *wire.Hello) (dbrestore.Guest, error) {
			tg = &Target{Command: h.Command, Dir: filepath.Join(dir, "killed"), RAMDir: "/dev/shm",
				Ports: map[int]int{cur.port: freePort(t)}, SourcePid: src.Pid(), KillWithParent: true}
			return dyingTarget{tg}, nil
		})
		r, err := precopy.Run(ctx, precopy.Config{To: addr, Mode: precopy.ModeHybrid, Logger: testLog()}, src)
		if err == nil {
			t.Fatal("migration to a destination qemu killed before cont succeeded")
		}
		if r.Outcome != report.Aborted {
			t.Fatalf("outcome %s (%v), want aborted with the source intact", r.Outcome, err)
		}
		if serr := <-served; serr == nil {
			t.Fatal("destination reported success")
		}
		t.Logf("aborted: %v", err)
		if st, err := cur.vm.Mon.QueryStatus(ctx); err != nil || st.Status != "running" {
			t.Fatalf("source qemu is %+v (%v) after the abort, want running", st, err)
		}
		// The device-state settings are undone: x-ignore-shared left on
		// would have a later QEMU migration skip the VM's RAM.
		if st, err := cur.vm.Mon.deviceStateSettings(ctx); err != nil || st.caps[CapIgnoreShared] || st.maxBandwidth == deviceStateBandwidth {
			t.Fatalf("source migration settings after the abort: %+v (%v), want x-ignore-shared off and max-bandwidth as before", st, err)
		}
		if tg != nil {
			if _, err := os.Stat(tg.RAMFiles()[0]); !errors.Is(err, os.ErrNotExist) || tg.VM() == nil {
				t.Fatalf("destination RAM file left behind (%v) or qemu never started", err)
			}
		}
		if got := checksums(ctx, t, waitSQL(ctx, t, cur.port)); got != want {
			t.Fatalf("source after abort: checksums %s, want %s", got, want)
		}
	})
	if !ok {
		return
	}

	// dmig's own engine end to end, in each mode: pages from the RAM file,
	// the paused source's device state in DeviceState frames, the
	// destination QEMU's device-state load reading guest RAM through the
	// registered uffd (post-copy faults served meanwhile).
	for _, mode := range []precopy.Mode{precopy.ModeHybrid, precopy.ModePrecopy, precopy.ModePostcopy} {
		ok = t.Run("dmig-"+string(mode), func(t *testing.T) {
			src, err := newSource(ctx, cur.vm.Mon)
			if err != nil {
				t.Fatal(err)
			}
			port := freePort(t)
			var tg *Target
			top.Cleanup(func() {
				if tg != nil {
					tg.Kill()
				}
			})
			oracle := &oracleTarget{src: src.RAM()[0], placedOnly: mode != precopy.ModePrecopy,
				placed: ramfile.NewPlaceCheck([]string{src.RAM()[0].Path})}
			addr, served, got := dmigDest(ctx, t, func(h *wire.Hello) (dbrestore.Guest, error) {
				tg = &Target{Command: h.Command, Dir: filepath.Join(dir, fmt.Sprintf("dmig-%s-%d", mode, os.Getpid())), RAMDir: "/dev/shm",
					Ports: map[int]int{cur.port: port}, SourcePid: src.Pid(), KillWithParent: true}
				if mode == precopy.ModePrecopy {
					// As on another host: the disk is checked by the
					// mark the source set for this session.
					tg.SourcePid, tg.Session = 0, h.Session
				}
				oracle.Target = tg
				return oracle, nil
			})
			base, acked := startCommits(ctx, t, cur.port)
			time.Sleep(time.Second)

			// Hybrid finds the guest agent on the VM's command line, as
			// dmig migrate --qmp does, and sends the clean pool pages as
			// references the destination reads from the VM's disk. A TCG
			// guest's walk of its pool takes seconds.
			pc := precopy.Config{To: addr, Mode: mode, Logger: testLog()}
			if mode == precopy.ModeHybrid {
				var found bool
				if pc.LayoutAddr, found = src.AgentAddr(); !found || pc.LayoutAddr != "unix:"+cur.agent {
					t.Fatalf("agent socket %q on the command line, want unix:%s", pc.LayoutAddr, cur.agent)
				}
				pc.LayoutTimeout = 60 * time.Second
			}
			start := time.Now()
			r, err := precopy.Run(ctx, pc, src)
			if err != nil {
				t.Fatal(err)
			}
			if f := r.Refs; mode == precopy.ModeHybrid {
				if f == nil {
					t.Fatal("hybrid report without its storage-reference figures")
				}
				fp := f.FirstPass
				t.Logf("by reference: %+v; layout %d pages, %.0f ms old, cached %v, pool %d clean %d dirty, refreshed %q, warning %q; verified %d, mismatched %d",
					fp, f.LayoutPages, f.LayoutAgeMS, f.Cached, f.PoolCleanPages, f.PoolDirtyPages, f.Refreshed, f.Warning, r.Pages.StorageVerified, r.Pages.StorageMismatch)
				if n := fp.Reference + fp.Zero + fp.NotInLayout + fp.NoLayout + fp.Refused; n != r.GuestPages {
					t.Errorf("the first pass's routes add up to %d pages, the guest has %d", n, r.GuestPages)
				}
				// The image's pool holds ~750 MB of tables: most go by
				// reference, and the agent's figures say how much it holds.
				if fp.Reference < 100_000 || fp.NoLayout != 0 || f.PoolCleanPages == 0 || f.Warning != "" || r.Pages.StorageVerified == 0 {
					t.Errorf("first pass %+v, pool %d clean pages, warning %q, %d verified: want most of the pool by reference",
						fp, f.PoolCleanPages, f.Warning, r.Pages.StorageVerified)
				}
			}
			if err := <-served; err != nil {
				t.Fatalf("destination: %v", err)
			}
			dr := <-got
			if dr.Err != nil {
				t.Fatalf("destination: %v", dr.Err)
			}
			checkDmigDowntime(t, r, cur.vm.Mon, tg.VM().Mon, start)
			t.Logf("dmig %s: total %.0f ms, downtime %.0f ms, %d MB sent, %d passes, %d pages owed at the switch, %d faults, %d pushed",
				mode, r.TotalMS, r.DowntimeMS, r.BytesSent>>20, r.Iterations, r.PostcopyPages, dr.Figures.Pages.PostcopyFault, dr.Figures.Pages.Prefetch)
			if r.BytesSent < 100<<20 {
				t.Errorf("dmig sent %d bytes: less than the guest's used RAM", r.BytesSent)
			}
			switch d := oracle.diff; {
			case oracle.err != nil:
				t.Errorf("RAM oracle: %v", oracle.err)
			case d.Differ != 0:
				t.Errorf("RAM oracle: %d of %d pages differ at the resume (first at %#x)", d.Differ, d.Checked, d.First)
			case mode == precopy.ModePrecopy && d.Unchecked != 0:
				t.Errorf("RAM oracle: %d pages not placed by the resume of a pre-copy", d.Unchecked)
			default:
				t.Logf("RAM oracle: %d pages equal at the resume, %d not placed yet; it took %.0f ms of the downtime", d.Checked, d.Unchecked, float64(oracle.took.Microseconds())/1000)
			}
			// The source stays paused to completion: every page placed
			// after the resume must be its page at the switch.
			pr, err := oracle.placed.Result()
			// Pages faulted in while the device state loaded were
			// compared at the resume too; past them, a page checked
			// twice was placed twice.
			both, _ := oracle.placed.Overlap(0, oracle.diff.Compared)
			switch pages := oracle.src.Size / ramfile.DiffPage; {
			case err != nil:
				t.Errorf("RAM oracle after the resume: %v", err)
			case pr.Differ != 0:
				t.Errorf("RAM oracle: %d of %d pages placed after the resume differ from the source's (first at %#x)", pr.Differ, pr.Checked, pr.First)
			case mode != precopy.ModePrecopy && pr.Checked == 0 && oracle.diff.Unchecked > 0:
				t.Errorf("RAM oracle: no page placed after the resume was checked, %d were not placed at it", oracle.diff.Unchecked)
			case oracle.diff.Checked+pr.Checked-both > pages:
				t.Errorf("RAM oracle: %d pages checked at the resume and %d after it (%d of them both), more than the guest's %d",
					oracle.diff.Checked, pr.Checked, both, pages)
			default:
				t.Logf("RAM oracle: %d pages placed after the resume (%d of them before it: faults during the device-state load), all equal to the source's", pr.Checked, both)
			}
			// The source QEMU is gone (Finish quit it).
			select {
			case <-cur.vm.Exited():
			case <-time.After(30 * time.Second):
				t.Fatal("source qemu still runs after the migration")
			}
			cur = &running{vm: tg.VM(), port: port, agent: movedAgent(tg.Dir)}
			logConsoleOnFailure(t, filepath.Join(tg.Dir, "serial.log"))
			ignoreSharedOff(ctx, t, cur.vm.Mon, "the migrated VM")
			checkDestination(ctx, t, port, want, "dmig "+string(mode), base, <-acked)
		})
		if !ok {
			return
		}
	}

	// QEMU's own modes last: on QEMU 7.2 they may leave the guest broken.
	// QEMU 10 runs its strongest settings too (multifd, zstd, preempt).
	modes := []string{ModePrecopy, ModePostcopy}
	if version.AtLeast(TCGDirtyFix.Major, TCGDirtyFix.Minor) {
		modes = NativeModes
	}
	qemuBroke := ""
	for i, mode := range modes {
		ok = t.Run(mode, func(t *testing.T) {
			mem := fmt.Sprintf("%sq%d", shm, i)
			top.Cleanup(func() { os.Remove(mem) })
			m, err := Discover(ctx, cur.vm.Mon, 0)
			if err != nil {
				t.Fatal(err)
			}
			dst := destination(ctx, t, top, cur, filepath.Join(dir, mode), mem)
			// Commits during the migration: every acknowledged one must
			// be at the destination (and at most the one in flight more).
			base, acked := startCommits(ctx, t, cur.port)
			// And sysbench's read/write load on the pool's tables, to give
			// QEMU's dirty tracking work (QEMU 7.2 loses pages under it).
			stopLoad := startPoolLoad(ctx, t, cur.port)
			time.Sleep(time.Second)
			nc := NativeConfig{Mode: mode, URI: fmt.Sprintf("tcp:127.0.0.1:%d", freePort(t))}
			if IsPostcopy(mode) {
				// An idle guest's first pass leaves almost nothing: switch
				// during it so pages really come by post-copy, and cap the
				// rate so that on an idle host (TCG runs faster, most pages
				// are zero) the pass is still running a second in.
				nc.PostcopyAfter = time.Second
				nc.MaxBandwidth = 128 << 20
			}
			var res *NativeResult
			if mode != ModePostcopy {
				var err error
				if res, err = MigrateNative(ctx, cur.vm.Mon, dst.vm.Mon, nc); err != nil {
					t.Fatal(err)
				}
			} else {
				res = cliMigrate(ctx, t, img.Dmig, cur.vm, dst.vm, nc)
			}
			stopLoad()
			r := res.Report
			t.Logf("%s: total %.0f ms, downtime %.1f ms guest-visible, %.0f ms by QEMU, %d MB sent, %d passes, post-copy %v (%d pages owed at the switch, %d requests)",
				mode, r.TotalMS, r.DowntimeMS, r.ReportedDowntimeMS, r.BytesSent>>20, r.Iterations, res.Postcopy, r.PostcopyPages, r.Pages.PostcopyFault)
			checkNativeDowntime(t, r)
			// The RAM oracle: both QEMUs are paused (the destination was
			// started with -S), so their RAM must be the same.
			if st, err := dst.vm.Mon.QueryStatus(ctx); err != nil || st.Status != "paused" {
				t.Fatalf("destination %+v (%v) after the migration, want paused (-S)", st, err)
			}
			d, err := ramfile.Diff(m.Blocks[0].Path, mem, int64(m.Blocks[0].Size), false)
			if err != nil {
				t.Fatal(err)
			}
			if r.BytesSent < 100<<20 {
				t.Errorf("%s sent %d bytes: less than the guest's used RAM", mode, r.BytesSent)
			}
			if IsPostcopy(mode) != res.Postcopy {
				t.Errorf("%s: source went through post-copy: %v", mode, res.Postcopy)
			}
			if IsPostcopy(mode) && r.PostcopyPages == 0 {
				t.Errorf("post-copy switched with nothing left to send")
			}
			if d.Differ > 0 {
				t.Logf("%s on QEMU %s: %d of %d pages differ between source and destination (first at %#x)", mode, version, d.Differ, d.Checked, d.First)
				if version.AtLeast(TCGDirtyFix.Major, TCGDirtyFix.Minor) {
					t.Errorf("QEMU %s lost pages: %d differ", version, d.Differ)
				}
				// QEMU 7.2's own migrations lose pages of this TCG guest
				// (docs/qemu.md): the figures stand, the guest does not.
				// Run on lost pages, it may crash, hang or answer and then
				// hang; nothing it does says anything more, and waiting
				// on it cost minutes. Both VMs are killed at cleanup.
				qemuBroke = fmt.Sprintf("%d pages lost", d.Differ)
				return
			}
			t.Logf("%s on QEMU %s: all %d pages equal", mode, version, d.Checked)
			if err := dst.vm.Mon.Cont(ctx); err != nil {
				t.Fatal(err)
			}
			old := cur
			cur = dst
			if err := old.vm.Quit(ctx); err != nil {
				t.Fatal(err)
			}
			if old.mem != "" {
				// Its 2 GiB are the machine's memory: five modes' worth
				// kept to the end of the test starved the guests.
				if err := os.Remove(old.mem); err != nil {
					t.Error(err)
				}
			}
			last := <-acked // the source's end cuts the writer's connection
			// Every page arrived; a guest broken now was broken by
			// something else than RAM (on 7.2, its TCG; else a failure).
			if crash := answersOrCrashed(ctx, dst.port, filepath.Join(dir, mode, "serial.log")); crash != "" {
				qemuBroke = crash
				t.Logf("%s: the guest broke after a migration that lost no page: %s", mode, crash)
				if version.AtLeast(TCGDirtyFix.Major, TCGDirtyFix.Minor) {
					t.Errorf("QEMU %s broke the guest", version)
				}
				return
			}
			checkDestination(ctx, t, dst.port, want, mode, base, last)
		})
		if !ok || qemuBroke != "" {
			return
		}
	}
}

// checkDmigDowntime requires the guest-visible downtime of one of dmig's
// migrations, started at start, from src's STOP to dst's RESUME, and
// that it fit in the engine's figure: the engine's clock starts before
// it sends stop and stops once the destination has said, after cont
// returned, that its guest runs, so it spans the events' window. One
// host, one wall clock; 1 ms for the two readings of it.
func checkDmigDowntime(t *testing.T, r *report.Report, src, dst *Monitor, start time.Time) {
	t.Helper()
	d, err := GuestDowntime(src.RecentEvents(), dst.RecentEvents(), start, RunResume)
	if err != nil {
		t.Errorf("guest-visible downtime: %v", err)
		return
	}
	g := report.MS(d)
	t.Logf("downtime %.1f ms guest-visible (STOP to RESUME), %.1f ms by the engine", g, r.DowntimeMS)
	if g <= 0 || g > r.DowntimeMS+1 {
		t.Errorf("guest-visible downtime %.1f ms, want > 0 and within the engine's %.1f ms", g, r.DowntimeMS)
	}
}

// checkNativeDowntime requires QEMU's own migration to report a measured
// guest-visible downtime not far below QEMU's figure. QEMU's ends once
// the source has written the stream's last byte; the destination's run
// point comes after it has read that byte (pre-copy: after loading it;
// post-copy: the whole switch package is read before LISTEN raises
// postcopy-active), but a busy host may schedule the two threads the other
// way round.
func checkNativeDowntime(t *testing.T, r *report.Report) {
	t.Helper()
	// QEMU rounds its figure to the millisecond, and ends it when the
	// source's migration thread computes it, after its last bytes went
	// out: on two loaded cores that thread can get the CPU only after the
	// destination has loaded them (69.6 ms guest-visible against QEMU's
	// 74 ms, seen with multifd-zstd). A switched post-copy's guest-visible
	// run point (postcopy-active) comes before the destination loads the
	// device state, while QEMU's figure ends after the source sent it
	// (docs/qemu.md, "How downtime is measured"): a few ms apart, 2.1 ms
	// seen with preempt. What this catches is a figure far below QEMU's:
	// an event taken from another migration, or none.
	tolerance := max(5, 0.1*r.ReportedDowntimeMS) // ms
	if r.DowntimeWarning != "" || r.DowntimeMS <= 0 || r.DowntimeMS < r.ReportedDowntimeMS-tolerance {
		t.Errorf("downtime %.1f ms guest-visible (warning %q), QEMU's %.0f ms: want it measured, > 0 and at least QEMU's less %.0f ms",
			r.DowntimeMS, r.DowntimeWarning, r.ReportedDowntimeMS, tolerance)
	}
}

// logConsoleOnFailure logs the end of a guest's console log (QEMU's
// -serial file:) if t fails: what the guest said of a hang or a crash.
func logConsoleOnFailure(t *testing.T, path string) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Logf("guest console: %v", err)
			return
		}
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		t.Logf("guest console (%s), last lines:\n%s", path, strings.Join(lines[max(0, len(lines)-40):], "\n"))
	})
}

// answers reports whether the guest's database at port answers a ping now.
func answers(ctx context.Context, port int) bool {
	db, err := sql.Open("mysql", fmt.Sprintf("dmig:dmig@tcp(127.0.0.1:%d)/sbtest?timeout=3s&readTimeout=5s", port))
	if err != nil {
		return false
	}
	defer db.Close()
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return db.PingContext(pctx) == nil
}

// answersOrCrashed waits up to 3 minutes for the guest's database at port
// to answer, and returns the kernel crash its console (the QEMU serial
// file console) shows meanwhile, if any.
func answersOrCrashed(ctx context.Context, port int, console string) string {
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if c := ConsoleCrash(console); c != "" {
			return c
		}
		if answers(ctx, port) {
			return ConsoleCrash(console)
		}
		time.Sleep(2 * time.Second)
	}
	return ConsoleCrash(console)
}

// testLog logs the engines at info, or at DMIG_TEST_LOG_LEVEL (debug shows
// each switchover's steps).
func testLog() hclog.Logger {
	level := hclog.Info
	if l := os.Getenv("DMIG_TEST_LOG_LEVEL"); l != "" {
		level = hclog.LevelFromString(l)
	}
	return hclog.New(&hclog.LoggerOptions{Name: "dmig", Level: level, Output: os.Stderr})
}

// dmigDest serves one migration on loopback into the guest newGuest makes.
// It returns the address, and channels for Serve's error and the
// migration's result.
func dmigDest(ctx context.Context, t *testing.T, newGuest func(*wire.Hello) (dbrestore.Guest, error)) (string, <-chan error, <-chan dbrestore.Result) {
	t.Helper()
	l, err := wire.Listen(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	served := make(chan error, 1)
	got := make(chan dbrestore.Result, 1)
	go func() {
		served <- dbrestore.Serve(ctx, l, dbrestore.Config{Logger: testLog(), NewGuest: newGuest}, true, func(r dbrestore.Result) { got <- r })
	}()
	return l.Addr().String(), served, got
}

// startCommits commits UPDATEs of the counter row through the guest at
// port, one at a time, until its connection fails (the source QEMU quits),
// and then sends the count acknowledged. It returns the count it started
// from.
func startCommits(ctx context.Context, t *testing.T, port int) (int64, <-chan int64) {
	t.Helper()
	wdb, err := sql.Open("mysql", fmt.Sprintf("dmig:dmig@tcp(127.0.0.1:%d)/sbtest?timeout=5s&readTimeout=20s&writeTimeout=20s", port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { wdb.Close() })
	wdb.SetMaxOpenConns(1)
	wdb.SetConnMaxLifetime(0)
	var base int64
	if err := wdb.QueryRowContext(ctx, "SELECT n FROM counter WHERE id = 1").Scan(&base); err != nil {
		t.Fatal(err)
	}
	acked := make(chan int64, 1)
	go func() {
		n := base
		for {
			if _, err := wdb.ExecContext(ctx, "UPDATE counter SET n = n + 1 WHERE id = 1"); err != nil {
				break
			}
			n++
		}
		acked <- n
	}()
	return base, acked
}

// startPoolLoad runs sysbench oltp_read_write with 2 threads on the
// image's pool database through the guest at port (user networking: the
// connections end with the source QEMU), and returns a stop that kills it.
// The sbtest tables the checksums cover are not touched.
func startPoolLoad(ctx context.Context, t *testing.T, port int) func() {
	t.Helper()
	cmd := exec.CommandContext(ctx, "sysbench", "oltp_read_write", "--db-driver=mysql", "--mysql-host=127.0.0.1",
		fmt.Sprint("--mysql-port=", port), "--mysql-user=dmig", "--mysql-password=dmig", "--mysql-db=pool",
		"--tables=10", "--table-size=300000", "--threads=2", "--time=0", "--mysql-ignore-errors=all", "run")
	if err := cmd.Start(); err != nil {
		t.Fatalf("start sysbench: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	stop := func() {
		_ = cmd.Process.Kill()
		<-done
	}
	t.Cleanup(stop)
	return stop
}

// checkDestination checks the guest answering at port has the source's
// tables (want) and every commit acknowledged during the migration: the
// counter is at least last and at most the one in flight more.
func checkDestination(ctx context.Context, t *testing.T, port int, want, what string, base, last int64) {
	t.Helper()
	ddb := waitSQL(ctx, t, port)
	if got := checksums(ctx, t, ddb); got != want {
		t.Fatalf("checksums at the destination %s, source had %s", got, want)
	}
	var n int64
	if err := ddb.QueryRowContext(ctx, "SELECT n FROM counter WHERE id = 1").Scan(&n); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %d commits during the migration, counter %d at the destination", what, last-base, n)
	if n < last || n > last+1 || last-base < 10 {
		t.Fatalf("destination counter %d; %d commits acknowledged (from %d)", n, last, base)
	}
}

// ignoreSharedOff fails the test if mon's QEMU has x-ignore-shared on: a
// VM dmig moved or left must migrate whole under QEMU's own migration.
func ignoreSharedOff(ctx context.Context, t *testing.T, mon *Monitor, what string) {
	t.Helper()
	st, err := mon.deviceStateSettings(ctx)
	if err != nil {
		t.Fatalf("read the migration settings of %s: %v", what, err)
	}
	if st.caps[CapIgnoreShared] {
		t.Fatalf("%s has %s on", what, CapIgnoreShared)
	}
}

// oracleTarget is a destination that compares its RAM with the paused
// source's as the engine resumes it: every page in pre-copy, the pages
// placed so far otherwise.
type oracleTarget struct {
	*Target
	src        precopy.Block
	placedOnly bool
	diff       ramfile.DiffResult
	err        error
	took       time.Duration       // the oracle's share of the downtime
	placed     *ramfile.PlaceCheck // the pages placed after the resume
}

// Placed compares a page placed after the resume with the paused source's
// (dbrestore.PlaceWatcher).
func (o *oracleTarget) Placed(block uint32, page uint64, data []byte) {
	o.placed.Placed(block, page, data)
}

func (o *oracleTarget) Resume(ctx context.Context) error {
	start := time.Now()
	dst, ok := o.RAMFile(o.src.Name)
	if !ok {
		o.err = fmt.Errorf("no destination RAM file for %s", o.src.Name)
	} else {
		o.diff, o.err = ramfile.Diff(o.src.Path, dst, int64(o.src.Size), o.placedOnly)
	}
	o.took = time.Since(start)
	return o.Target.Resume(ctx)
}

// dyingTarget is a destination QEMU that is killed (SIGKILL) as its device
// state starts to load: a crash in the last step before cont.
type dyingTarget struct{ *Target }

func (d dyingTarget) LoadDeviceState(ctx context.Context, r io.Reader) error {
	if err := d.VM().Cmd.Process.Kill(); err != nil {
		return err
	}
	<-d.VM().Exited()
	return d.Target.LoadDeviceState(ctx, r)
}
