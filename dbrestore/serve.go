package dbrestore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"

	"github.com/dmig/dmig/internal/report"
	"github.com/dmig/dmig/wire"
)

// Result is the outcome of one migration received by Serve.
type Result struct {
	Guest   string
	Session wire.SessionID
	Figures *report.Dest
	Err     error
}

// Serve accepts migrations on l until ctx ends, each in its own goroutine,
// and refuses a second migration of a guest (by name) while one runs. Each
// finished migration is passed to done, if not nil. With once, Serve returns
// after the first accepted migration ends, with its error.
func Serve(ctx context.Context, l *wire.Listener, cfg Config, once bool, done func(Result)) error {
	cfg.defaults()
	var (
		mu     sync.Mutex
		active = map[string]bool{}
		wg     sync.WaitGroup
	)
	defer wg.Wait()
	l.Rejected = func(a net.Addr, err error) {
		cfg.Logger.Warn("connection refused", "from", a, "error", err)
	}
	for {
		var guest Guest
		sess, err := l.Accept(ctx, func(h *wire.Hello) wire.HelloAck {
			mu.Lock()
			defer mu.Unlock()
			if active[h.Guest] {
				return wire.HelloAck{Code: wire.RefuseBusy, Message: fmt.Sprintf("guest %s is already migrating to this host", h.Guest)}
			}
			g, err := cfg.NewGuest(h)
			if err != nil {
				return wire.HelloAck{Code: wire.RefuseUnsupported, Message: err.Error()}
			}
			guest = g
			active[h.Guest] = true
			return wire.HelloAck{Accepted: true}
		})
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			cfg.Logger.Warn("session refused or failed to open", "error", err)
			continue
		}
		cfg.Logger.Info("migration accepted", "guest", sess.Hello.Guest, "mode", sess.Hello.Mode, "session", sess.ID())
		res := make(chan error, 1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer sess.Close()
			fig, err := Receive(ctx, sess, guest, cfg)
			mu.Lock()
			delete(active, sess.Hello.Guest)
			mu.Unlock()
			if done != nil {
				done(Result{Guest: sess.Hello.Guest, Session: sess.ID(), Figures: fig, Err: err})
			}
			res <- err
		}()
		if once {
			return <-res
		}
	}
}
