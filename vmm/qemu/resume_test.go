package qemu

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestResumePaused: a VM a migration left paused is continued (a
// device-state migration still running cancelled first); a running one is
// left alone; one in another state is refused unless forced.
func TestResumePaused(t *testing.T) {
	for _, c := range []struct {
		status, migration string
		force             bool
		wantErr           error
		want              string // commands after query-status, space separated
	}{
		{"paused", "completed", false, nil, "query-migrate cont"},
		{"postmigrate", "active", false, nil, "query-migrate migrate_cancel query-migrate cont"},
		{"running", "none", false, nil, ""},
		{"shutdown", "none", false, ErrNotPaused, ""},
		{"shutdown", "none", true, nil, "query-migrate cont"},
	} {
		t.Run(c.status+"/"+c.migration, func(t *testing.T) {
			var mu sync.Mutex
			var got []string
			migration := c.migration
			path := fakeQEMU(t, func(cmd map[string]any) []string {
				name := cmd["execute"].(string)
				mu.Lock()
				defer mu.Unlock()
				switch name {
				case "qmp_capabilities":
					return []string{`{"return": {}, "id": "ID"}`}
				case "query-status":
					return []string{`{"return": {"running": ` + map[bool]string{true: "true", false: "false"}[c.status == "running"] + `, "status": "` + c.status + `"}, "id": "ID"}`}
				case "migrate_cancel":
					migration = "cancelled"
				}
				got = append(got, name)
				if name == "query-migrate" {
					return []string{`{"return": {"status": "` + migration + `"}, "id": "ID"}`}
				}
				return []string{`{"return": {}, "id": "ID"}`}
			})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			// The fake serves one connection.
			var st Status
			var err error
			if c.force {
				var m *Monitor
				if m, err = Dial(ctx, path); err == nil {
					st, err = m.ResumePaused(ctx, true)
					m.Close()
				}
			} else {
				st, err = ResumeAt(ctx, path)
			}
			if !errors.Is(err, c.wantErr) || (c.wantErr == nil && err != nil) {
				t.Fatalf("resume of a vm %s: %v, want %v", c.status, err, c.wantErr)
			}
			if st.Status != c.status {
				t.Fatalf("status found %q, want %q", st.Status, c.status)
			}
			mu.Lock()
			defer mu.Unlock()
			if s := strings.Join(got, " "); s != c.want {
				t.Fatalf("commands %q, want %q", s, c.want)
			}
		})
	}
}
