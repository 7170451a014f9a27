package main

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/alecthomas/kong"
)

// TestFlagsDocumented: every flag of every command an operator runs is
// named in docs/ (as --flag), so that --help and the docs cover the same
// flags. Hidden commands and flags (the keeper, the guardian) are exempt.
func TestFlagsDocumented(t *testing.T) {
	var c cli
	k, err := kong.New(&c, kong.Name("dmig"))
	if err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob("../../docs/*.md")
	if err != nil || len(files) == 0 {
		t.Fatalf("no docs: %v", err)
	}
	var docs strings.Builder
	for _, f := range append(files, "../../README.md") {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		docs.Write(b)
	}
	text := docs.String()
	var missing []string
	var walk func(n *kong.Node, path string)
	walk = func(n *kong.Node, path string) {
		if n.Hidden {
			return
		}
		for _, f := range n.Flags {
			if f.Hidden || f.Name == "help" {
				continue
			}
			if !strings.Contains(text, "--"+f.Name) {
				missing = append(missing, strings.TrimSpace(path+" --"+f.Name))
			}
		}
		for _, ch := range n.Children {
			walk(ch, path+" "+ch.Name)
		}
	}
	walk(k.Model.Node, "dmig")
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("%d flags are in --help but not in docs/:\n  %s", len(missing), strings.Join(missing, "\n  "))
	}
}
