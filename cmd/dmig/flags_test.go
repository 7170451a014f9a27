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

// TestRateFlags: the rate flags take the bandwidth units and refuse a
// rate below the smallest cap with the reason.
func TestRateFlags(t *testing.T) {
	parse := func(args ...string) (*cli, error) {
		var c cli
		k, err := kong.New(&c, kong.Name("dmig"), kong.Exit(func(int) {}))
		if err != nil {
			t.Fatal(err)
		}
		_, err = k.Parse(args)
		return &c, err
	}
	c, err := parse("serve", "--listen", "127.0.0.1:0", "--restore-rate", "200M")
	if err != nil || c.Serve.RestoreRate != 200_000_000 {
		t.Fatalf("serve --restore-rate 200M: %v, rate %d", err, c.Serve.RestoreRate)
	}
	c, err = parse("migrate", "--to", "h:1", "--qmp", "/x", "--max-bandwidth", "1Gi")
	if err != nil || c.Migrate.MaxBW != 1<<30 {
		t.Fatalf("migrate --max-bandwidth 1Gi: %v, rate %d", err, c.Migrate.MaxBW)
	}
	for _, bad := range []string{"10k", "fast", "-5M"} {
		if _, err := parse("serve", "--listen", "127.0.0.1:0", "--restore-rate", bad); err == nil || !strings.Contains(err.Error(), bad) {
			t.Errorf("serve --restore-rate %s: %v, want an error naming the value", bad, err)
		}
	}
}
