package bandwidth

import "time"

const (
	slot  = 50 * time.Millisecond
	slots = int(time.Second / slot)
)

// meter counts granted bytes: in all, and in slots of 50 ms, whose last
// 20 make the sliding 1 s window the peak is taken over.
type meter struct {
	bytes, urgent   uint64
	firstAt, lastAt time.Time
	epoch           time.Time // slot 0 starts here
	cur             int64     // slot the ring ends with
	ring            [slots]uint64
	window          uint64 // sum of ring
	peak            uint64
}

func (m *meter) add(now time.Time, n uint64, urgent bool) {
	if m.firstAt.IsZero() {
		m.firstAt, m.epoch = now, now
	}
	m.lastAt = now
	m.bytes += n
	if urgent {
		m.urgent += n
	}
	m.advance(now)
	m.ring[m.cur%int64(slots)] += n
	m.window += n
	m.peak = max(m.peak, m.window)
}

// advance moves the ring to now's slot, dropping slots older than a
// second.
func (m *meter) advance(now time.Time) {
	if m.epoch.IsZero() {
		return
	}
	s := int64(now.Sub(m.epoch) / slot)
	for i := 0; m.cur < s && i < slots; i++ {
		m.cur++
		k := m.cur % int64(slots)
		m.window -= m.ring[k]
		m.ring[k] = 0
	}
	m.cur = max(m.cur, s)
}
