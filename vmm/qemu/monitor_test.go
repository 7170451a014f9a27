package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeQEMU serves one QMP connection on a unix socket: the greeting, then
// handle's answer (raw JSON lines) to each command.
func fakeQEMU(t *testing.T, handle func(cmd map[string]any) []string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "qmp.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.Write([]byte(`{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}` + "\n"))
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			var cmd map[string]any
			if json.Unmarshal(sc.Bytes(), &cmd) != nil {
				return
			}
			for _, line := range handle(cmd) {
				line = strings.ReplaceAll(line, "ID", cmd["id"].(string))
				if _, err := c.Write([]byte(line + "\n")); err != nil {
					return
				}
			}
		}
	}()
	return path
}

func TestMonitor(t *testing.T) {
	big := strings.Repeat("x", 200<<10) // longer than go-qemu's 64 KiB line limit
	path := fakeQEMU(t, func(cmd map[string]any) []string {
		switch cmd["execute"] {
		case "qmp_capabilities":
			return []string{`{"return": {}, "id": "ID"}`}
		case "query-status":
			// An event first: it must not be taken for the reply.
			return []string{`{"event": "STOP", "data": {}, "timestamp": {"seconds": 1, "microseconds": 2}}`,
				`{"return": {"running": false, "status": "paused"}, "id": "ID"}`}
		case "human-monitor-command":
			return []string{`{"return": "` + big + `", "id": "ID"}`}
		case "hang":
			return nil
		default:
			return []string{`{"error": {"class": "CommandNotFound", "desc": "The command x has not been found"}, "id": "ID"}`}
		}
	})
	ctx := context.Background()
	m, err := Dial(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.Version.String() != "7.2.22" {
		t.Fatalf("version %s", m.Version)
	}
	evs, _ := m.Events(ctx)
	st, err := m.QueryStatus(ctx)
	if err != nil || st.Status != "paused" || st.Running {
		t.Fatalf("QueryStatus = %+v, %v", st, err)
	}
	// The event came before the reply: it is recorded by now.
	if l := m.RecentEvents(); len(l) != 1 || l[0].Name != "STOP" || !l[0].Time.Equal(time.Unix(1, 2000)) {
		t.Fatalf("recorded events %+v, want the STOP at 1.000002 s", l)
	}
	select {
	case ev := <-evs:
		if ev.Event != "STOP" || ev.Timestamp.Microseconds != 2 {
			t.Fatalf("event %+v", ev)
		}
	case <-time.After(time.Second):
		t.Fatal("no STOP event")
	}
	out, err := m.HMP(ctx, "info mtree -f")
	if err != nil || len(out) != len(big) {
		t.Fatalf("HMP: %d bytes, %v", len(out), err)
	}
	err = m.Execute(ctx, "x", nil, nil)
	var ce *CommandError
	if !errors.As(err, &ce) || ce.Class != "CommandNotFound" || ce.Command != "x" || !strings.Contains(ce.Desc, "not been found") {
		t.Fatalf("error %v, want a CommandError of class CommandNotFound", err)
	}
	// go-qemu's untyped Run works over it.
	raw, err := m.Run([]byte(`{"execute":"query-status"}`))
	if err != nil || !strings.Contains(string(raw), `"paused"`) {
		t.Fatalf("Run = %s, %v", raw, err)
	}
	cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := m.Execute(cctx, "hang", nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("hung command: %v, want the context's error", err)
	}
	m.Close()
	if err := m.Execute(ctx, "query-status", nil, nil); err == nil {
		t.Fatal("command on a closed monitor succeeded")
	}
}

func TestMonitorPeerGone(t *testing.T) {
	var gone = make(chan struct{})
	path := fakeQEMU(t, func(cmd map[string]any) []string {
		if cmd["execute"] == "qmp_capabilities" {
			return []string{`{"return": {}, "id": "ID"}`}
		}
		close(gone)
		return []string{`not json`} // the fake then drops the connection
	})
	m, err := Dial(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	err = m.Execute(context.Background(), "quit", nil, nil)
	<-gone
	if !errors.Is(err, ErrMonitorClosed) {
		t.Fatalf("command whose peer went away: %v, want ErrMonitorClosed", err)
	}
}
