package guest

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/dmig/dmig/layout"
)

// Pool reads the buffer pool's figures a layout request asks for
// (layout.Info): its data and dirty frames from the server's counters, and
// when it last finished loading. One SHOW GLOBAL STATUS and one variable: it
// takes no buffer-pool latch, and answers in a millisecond where a walk
// takes seconds.
func (a *Agent) Pool(ctx context.Context) (layout.Info, error) {
	var ps uint64
	if err := a.db.QueryRowContext(ctx, "SELECT @@innodb_page_size").Scan(&ps); err != nil {
		return layout.Info{}, fmt.Errorf("read innodb_page_size: %w", classify(err))
	}
	rows, err := a.db.QueryContext(ctx, `SHOW GLOBAL STATUS WHERE Variable_name IN
		('Innodb_buffer_pool_pages_data', 'Innodb_buffer_pool_pages_dirty', 'Innodb_buffer_pool_load_status')`)
	if err != nil {
		return layout.Info{}, fmt.Errorf("read buffer pool status: %w", classify(err))
	}
	defer rows.Close()
	st := map[string]string{}
	for rows.Next() {
		var k, v string
		if err := rows.Scan(&k, &v); err != nil {
			return layout.Info{}, fmt.Errorf("read buffer pool status: %w", err)
		}
		st[strings.ToLower(k)] = v
	}
	if err := rows.Err(); err != nil {
		return layout.Info{}, fmt.Errorf("read buffer pool status: %w", err)
	}
	return poolInfo(st, ps, time.Now()), nil
}

// poolInfo makes the Info of the status variables st (lower-case names),
// the server's page size ps, read at now.
func poolInfo(st map[string]string, ps uint64, now time.Time) layout.Info {
	perFrame := max(ps/layout.PageSize, 1)
	data, _ := strconv.ParseUint(st["innodb_buffer_pool_pages_data"], 10, 64)
	dirty, _ := strconv.ParseUint(st["innodb_buffer_pool_pages_dirty"], 10, 64)
	i := layout.Info{PoolPages: data * perFrame, DirtyPages: dirty * perFrame}
	i.LoadAge, i.Loading = loadStatus(st["innodb_buffer_pool_load_status"], now)
	return i
}

// loadStatus reads Innodb_buffer_pool_load_status: "Buffer pool(s) load
// completed at 261203  8:30:01" (the server's local time, yymmdd and a
// space-padded hour), "Loaded 5121/8192 pages" while it loads. It returns
// how long ago the last load finished (0: unknown) and whether one runs.
func loadStatus(s string, now time.Time) (time.Duration, bool) {
	if strings.HasPrefix(s, "Loaded ") || strings.HasPrefix(s, "Loading ") {
		return 0, true
	}
	_, at, ok := strings.Cut(s, "load completed at ")
	if !ok {
		return 0, false
	}
	t, err := time.ParseInLocation("060102 15:04:05", strings.Join(strings.Fields(at), " "), time.Local)
	if err != nil {
		return 0, false
	}
	// A second's resolution: a load that finished this second is as
	// recent as can be told.
	return max(now.Sub(t), time.Microsecond), false
}
