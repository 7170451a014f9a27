package dbrestore

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/dmig/dmig/wire"
)

func TestCodeOf(t *testing.T) {
	base := errors.New("boom")
	cases := []struct {
		err  error
		want wire.ErrorCode
	}{
		{base, wire.ErrorGuest},
		{classed(wire.ErrorProtocol, base), wire.ErrorProtocol},
		{fmt.Errorf("bulk: %w", classed(wire.ErrorResource, base)), wire.ErrorResource},
		// A cause wrapped by the context keeps its class (dest.cause).
		{fmt.Errorf("%w (%v)", classed(wire.ErrorProtocol, base), errors.New("control read")), wire.ErrorProtocol},
	}
	for _, c := range cases {
		if got := codeOf(c.err); got != c.want {
			t.Errorf("codeOf(%v) = %v, want %v", c.err, got, c.want)
		}
	}
	if classed(wire.ErrorProtocol, nil) != nil {
		t.Error("classed(nil) is not nil")
	}
	if !errors.Is(classed(wire.ErrorProtocol, base), base) {
		t.Error("classed hides its error from errors.Is")
	}
}

// TestSafely: a panic in a session's goroutine becomes that session's
// internal error, with the stack, instead of ending the process.
func TestSafely(t *testing.T) {
	var m map[int]int
	err := safely(func() error { m[1] = 1; return nil })
	if err == nil {
		t.Fatal("a panic returned no error")
	}
	if codeOf(err) != wire.ErrorInternal || !strings.Contains(err.Error(), "assignment to entry in nil map") || !strings.Contains(err.Error(), "errors_test.go") {
		t.Fatalf("panic error %v (code %v): want an internal error naming the panic and its stack", err, codeOf(err))
	}
	if err := safely(func() error { return nil }); err != nil {
		t.Fatal(err)
	}
}
