package qemu

import (
	"bufio"
	"os"
	"strings"
)

// crashSignatures are lines a Linux guest's console prints when its kernel
// finds itself broken: after a migration they mean guest memory or CPU
// state did not arrive intact.
var crashSignatures = []string{"Kernel panic", "BUG:", "Oops:", "general protection fault", "list_add corruption", "list_del corruption"}

// ConsoleCrash returns the first line of a kernel crash in a guest's
// console log (QEMU's -serial file:, Plan.Serial), or "" if there is none
// or no log.
func ConsoleCrash(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		for _, sig := range crashSignatures {
			if strings.Contains(line, sig) {
				return strings.TrimSpace(line)
			}
		}
	}
	return ""
}
