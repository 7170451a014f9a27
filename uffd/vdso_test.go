package uffd

import (
	"os"
	"testing"
)

func TestVdsoCode(t *testing.T) {
	start, end, err := vdsoCode(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if start == 0 || end <= start || (end-start)%PageSize != 0 {
		t.Fatalf("vdso code [%#x, %#x)", start, end)
	}
	if _, _, err := vdsoCode(1 << 30); err == nil {
		t.Fatal("vdso of a pid that cannot exist")
	}
}
