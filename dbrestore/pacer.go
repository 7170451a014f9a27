package dbrestore

import (
	"context"
	"sync"
	"time"

	"github.com/dmig/dmig/internal/clock"
)

// pacer spaces reads of pages to a rate, across collectors.
type pacer struct {
	per   time.Duration // per page
	chunk int           // pages per read: 50 ms worth
	mu    sync.Mutex
	next  time.Time
}

func newPacer(bytesPerSec int64) *pacer {
	if bytesPerSec <= 0 {
		return nil
	}
	pps := max(1, bytesPerSec/pageSize)
	return &pacer{per: time.Second / time.Duration(pps), chunk: int(max(16, min(pps/20, maxRestoreBatch)))}
}

// wait returns when n more pages may be read.
func (p *pacer) wait(ctx context.Context, n int) error {
	p.mu.Lock()
	now := time.Now()
	if p.next.Before(now) {
		p.next = now
	}
	at := p.next
	p.next = p.next.Add(time.Duration(n) * p.per)
	p.mu.Unlock()
	return clock.Sleep(ctx, time.Until(at))
}
