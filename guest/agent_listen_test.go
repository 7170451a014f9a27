package guest

import (
	"context"
	"errors"
	"testing"
)

// TestServeLoopbackOnly: a layout tells where the database's pages are;
// the agent refuses to serve it on an address outside the guest can reach.
func TestServeLoopbackOnly(t *testing.T) {
	a := &Agent{}
	for _, addr := range []string{":7070", "0.0.0.0:7070", "[::]:7070", "10.0.2.15:7070", "example.com:7070"} {
		err := a.Serve(context.Background(), ServeConfig{Listen: addr})
		if !errors.Is(err, ErrNotLoopback) {
			t.Errorf("Serve(%q) = %v, want ErrNotLoopback", addr, err)
		}
	}
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0", "localhost:0"} {
		if err := loopbackOnly(addr); err != nil {
			t.Errorf("loopbackOnly(%q) = %v", addr, err)
		}
	}
}
