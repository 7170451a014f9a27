package main

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/dmig/dmig/dbrestore"
	"github.com/dmig/dmig/vmm/proc"
	"github.com/dmig/dmig/wire"
)

type serveCmd struct {
	Listen       string `required:"" help:"Address to accept migrations on (host:port)."`
	Dir          string `default:"/dev/shm/dmig" help:"Directory for the RAM files of arriving process guests (one subdirectory per session)."`
	Once         bool   `help:"Exit after the first migration, with its status."`
	FaultWorkers int    `default:"4" name:"fault-workers" help:"Post-copy faults resolved at once."`
}

func (c *serveCmd) Run(g *globals, ctx context.Context) error {
	log := g.logger("serve")
	l, err := wire.Listen(ctx, c.Listen)
	if err != nil {
		return &statusError{exitUsage, err}
	}
	defer l.Close()
	log.Info("listening", "addr", l.Addr())
	cfg := dbrestore.Config{
		FaultWorkers: c.FaultWorkers,
		Logger:       log,
		NewGuest: func(h *wire.Hello) (dbrestore.Guest, error) {
			return proc.NewTarget(filepath.Join(c.Dir, h.Session.String()), h.Command)
		},
	}
	err = dbrestore.Serve(ctx, l, cfg, c.Once, func(r dbrestore.Result) {
		if r.Err != nil {
			log.Error("migration failed", "guest", r.Guest, "error", r.Err)
			return
		}
		log.Info("migration complete", "guest", r.Guest, "faults", r.Figures.Pages.PostcopyFault, "prefetch", r.Figures.Pages.Prefetch)
	})
	if err != nil {
		return &statusError{exitAborted, fmt.Errorf("migration: %w", err)}
	}
	return nil
}
