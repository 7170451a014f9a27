package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/dmig/dmig/internal/keeper"
)

// keeperCmd is what serve starts per session (keeper.Spawn): its stdin is
// its pipe from serve.
type keeperCmd struct {
	Dir            string        `required:"" help:"Session directory."`
	Pid            int           `help:"Destination guest's pid; 0: serve names it on stdin once started."`
	PidStart       uint64        `name:"pid-start" help:"Its start time (field 22 of /proc/PID/stat)."`
	RecoverTimeout time.Duration `name:"recover-timeout" default:"0s" help:"How long a guest in post-copy waits for a serve to take it over once serve is gone."`
}

func (c *keeperCmd) Run(g *globals, ctx context.Context) error {
	// Its stderr is serve's: if that is a pipe whose reader died with
	// serve, a log line must not kill the keeper, which has a guest to
	// look after.
	signal.Ignore(syscall.SIGPIPE, syscall.SIGHUP)
	return keeper.Run(ctx, keeper.Config{
		Dir: c.Dir, Pid: c.Pid, PidStart: c.PidStart, RecoverTimeout: c.RecoverTimeout,
		Serve: os.Stdin, Logger: g.logger("keeper"),
	})
}
