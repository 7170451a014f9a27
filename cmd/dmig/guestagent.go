package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/dmig/dmig/guest"
)

// guestAgentCmd is `dmig guest-agent`: runs inside the guest, as root.
type guestAgentCmd struct {
	Serve guestServeCmd `cmd:"" help:"Serve layouts to the host over a virtio-serial port (and/or loopback TCP)."`
	Dump  guestDumpCmd  `cmd:"" help:"Take one layout and print a summary."`
}

// guestAgentFlags are the flags of every guest-agent command.
type guestAgentFlags struct {
	DSN  string  `name:"dsn" help:"Database DSN (go-sql-driver/mysql)." default:"root@unix(/run/mysqld/mysqld.sock)/"`
	PID  int     `name:"pid" help:"mysqld/mariadbd pid (default: from the server's pid file)."`
	Rate float64 `help:"Buffer pool read rate limit in MiB/s (0: unlimited)." default:"512"`
}

type guestServeCmd struct {
	guestAgentFlags
	Listen  string        `help:"Loopback TCP address to also serve layouts on, e.g. 127.0.0.1:7070 (others are refused: the host asks through --channel)."`
	Channel string        `help:"virtio-serial port to serve layouts on, e.g. /dev/virtio-ports/dmig.layout."`
	Refresh time.Duration `name:"refresh-every" help:"Take a layout in the background this often, so a migration's first pass gets one at once (0: only on request)."`
}

type guestDumpCmd struct {
	guestAgentFlags
	JSON bool   `name:"json" help:"Print JSON for scripts."`
	Out  string `help:"Also write the layout, encoded, to this file."`
}

func (c *guestAgentFlags) agent(g *globals) (*guest.Agent, error) {
	return guest.NewAgent(guest.Config{DSN: c.DSN, PID: c.PID, Rate: c.Rate, Logger: g.logger("guest-agent")})
}

func (s *guestServeCmd) Run(ctx context.Context, g *globals) error {
	a, err := s.agent(g)
	if err != nil {
		return err
	}
	defer a.Close()
	return a.Serve(ctx, guest.ServeConfig{Listen: s.Listen, Channel: s.Channel, RefreshEvery: s.Refresh})
}

func (d *guestDumpCmd) Run(ctx context.Context, g *globals) error {
	a, err := d.agent(g)
	if err != nil {
		return err
	}
	defer a.Close()
	r, err := a.Scan(ctx)
	if err != nil {
		return err
	}
	if d.Out != "" {
		b, err := r.Layout.MarshalBinary()
		if err != nil {
			return err
		}
		if err := os.WriteFile(d.Out, b, 0o644); err != nil {
			return fmt.Errorf("write layout: %w", err)
		}
	}
	if d.JSON {
		return json.NewEncoder(os.Stdout).Encode(dumpJSON(r))
	}
	printDump(r)
	return nil
}

type dumpOut struct {
	Server      string       `json:"server"`
	PID         int          `json:"pid"`
	PageSize    int          `json:"page_size"`
	PoolBytes   uint64       `json:"buffer_pool_bytes"`
	Generation  uint64       `json:"generation"`
	Disks       []string     `json:"disks"`
	Stats       guest.Stats  `json:"stats"`
	RefBytes    uint64       `json:"ref_bytes"`
	ScanGiBps   float64      `json:"scan_gib_per_s"`
	Regions     []regionJSON `json:"regions"`
	SkipSpaces  []string     `json:"skipped_spaces,omitempty"`
	FlushMethod string       `json:"innodb_flush_method"`
}

type regionJSON struct {
	Start string `json:"start"`
	End   string `json:"end"`
}

func dumpJSON(r *guest.Result) dumpOut {
	o := dumpOut{
		Server: r.Server.Version, PID: r.PID, PageSize: r.Server.PageSize, PoolBytes: r.Server.PoolSize,
		Generation: r.Layout.Generation, Stats: r.Stats, RefBytes: r.Stats.Refs * 4096,
		FlushMethod: r.Server.FlushMethod, Disks: []string{},
	}
	if s := r.Stats.Duration.Seconds(); s > 0 {
		o.ScanGiBps = float64(r.Stats.PoolBytes) / (1 << 30) / s
	}
	for _, d := range r.Layout.Disks {
		o.Disks = append(o.Disks, d.Name)
	}
	for _, g := range r.Regions {
		o.Regions = append(o.Regions, regionJSON{fmt.Sprintf("%#x", g.Start), fmt.Sprintf("%#x", g.End)})
	}
	for _, sp := range r.Server.Spaces {
		if sp.Skip != "" {
			o.SkipSpaces = append(o.SkipSpaces, fmt.Sprintf("%s (%s)", sp.Name, sp.Skip))
		}
	}
	sort.Strings(o.SkipSpaces)
	return o
}

func printDump(r *guest.Result) {
	o := dumpJSON(r)
	st := r.Stats
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "server\t%s, pid %d, %d KiB pages, %d MiB buffer pool\n", o.Server, o.PID, o.PageSize>>10, o.PoolBytes>>20)
	fmt.Fprintf(w, "scan\t%d MiB in %v (%.2f GiB/s), CPU %v\n", st.PoolBytes>>20, st.Duration.Round(time.Millisecond), o.ScanGiBps, st.CPU.Round(time.Millisecond))
	fmt.Fprintf(w, "frames\t%d: %d zero, %d descriptors, %d unknown, %d encrypted/compressed/temporary, %d InnoDB pages\n",
		st.Frames, st.Zero, st.Descriptors, st.Unknown, st.SkipSpace, st.Pages)
	fmt.Fprintf(w, "pages\t%d clean, %d dirty\n", st.Clean, st.Dirty)
	fmt.Fprintf(w, "skipped clean pages\t%d newer than the checkpoint, %d duplicate, %d file not mapped\n", st.Unsettled, st.Duplicate, st.NoFile)
	fmt.Fprintf(w, "skipped 4 KiB\t%d not present, %d no disk extent, %d shared frame\n", st.NotPresent, st.NoDisk, st.SharedPFN)
	fmt.Fprintf(w, "layout\tgeneration %d, %d runs, %d pages (%d MiB) on %v\n", o.Generation, st.Runs, st.Refs, st.Refs>>8, o.Disks)
	for _, s := range o.SkipSpaces {
		fmt.Fprintf(w, "skipped space\t%s\n", s)
	}
	w.Flush()
}
