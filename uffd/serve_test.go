package uffd

import (
	"context"
	"testing"
)

// serveWith runs Serve with fn as the handler until the returned stop is
// called; stop fails the test if Serve failed.
func serveWith(t *testing.T, u *FD, fn func(Msg) error) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- u.Serve(ctx, HandlerFunc(func(_ context.Context, m Msg) error { return fn(m) }), ServeConfig{Workers: 2}, nil)
	}()
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	}
}

// copyFrom resolves each fault with the page of src at its offset from
// base (src mirrors the memory registered at base).
func copyFrom(u *FD, base uintptr, src []byte) Handler {
	return HandlerFunc(func(_ context.Context, m Msg) error {
		page := m.Addr &^ (PageSize - 1)
		off := page - base
		_, _, err := u.CopyRange(page, src[off:off+PageSize], 0)
		return err
	})
}
