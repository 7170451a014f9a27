package guest

import (
	"testing"
	"time"
)

func TestPoolInfo(t *testing.T) {
	now := time.Date(2026, 12, 3, 8, 31, 1, 0, time.Local)
	i := poolInfo(map[string]string{
		"innodb_buffer_pool_pages_data":  "45000",
		"innodb_buffer_pool_pages_dirty": "500",
		"innodb_buffer_pool_load_status": "Buffer pool(s) load completed at 261203  8:30:01",
	}, 16384, now)
	if i.PoolPages != 180_000 || i.DirtyPages != 2_000 || i.LoadAge != time.Minute || i.Loading {
		t.Fatalf("%+v", i)
	}
	for s, want := range map[string]struct {
		age     time.Duration
		loading bool
	}{
		"Loaded 5121/8192 pages":                               {0, true},
		"Buffer pool(s) load completed at 261203 08:31:01":     {time.Microsecond, false},
		"Buffer pool(s) load completed at 261203 18:00:00":     {time.Microsecond, false}, // clock ahead: as recent as can be told
		"Buffer pool(s) load not started":                      {0, false},
		"Buffer pool(s) load aborted on error":                 {0, false},
		"Buffer pool(s) load completed at 26120x  8:30:01 bad": {0, false},
		"": {0, false},
	} {
		if age, loading := loadStatus(s, now); age != want.age || loading != want.loading {
			t.Errorf("loadStatus(%q) = %v %v, want %v %v", s, age, loading, want.age, want.loading)
		}
	}
}
