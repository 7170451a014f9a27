package qemu

import (
	"os"
	"path/filepath"
	"testing"
)

func TestConsoleCrash(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	healthy := write("ok.log", "[    0.000000] Linux version 6.1.0-56-amd64\n\nDebian GNU/Linux 12 dmig-guest ttyS0\n\ndmig-guest login: ")
	if c := ConsoleCrash(healthy); c != "" {
		t.Errorf("a healthy boot log reads as a crash: %q", c)
	}
	// What QEMU 7.2's own pre-copy left on this machine's TCG guest.
	broken := write("bad.log", "dmig-guest login: [  145.989048] list_add corruption. next->prev should be prev (ff33cc20bbe326b8), but was ff33cc20427880a8.\n[  145.989807] kernel BUG at lib/list_debug.c:27!\n")
	if c := ConsoleCrash(broken); c == "" || c[:14] != "dmig-guest log" {
		t.Errorf("ConsoleCrash = %q, want the corruption line", c)
	}
	if c := ConsoleCrash(filepath.Join(dir, "missing.log")); c != "" {
		t.Errorf("a missing log reads as a crash: %q", c)
	}
}
