package qemu

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
)

// eventLogSize bounds the events a Monitor keeps. A migration raises a
// handful (STOP, RESUME, one MIGRATION per state change) and one
// MIGRATION_PASS per pre-copy pass, all passes before the switchover: the
// events a downtime is measured from are among the last, so they are kept
// even after hundreds of passes.
const eventLogSize = 256

// Event is a QMP event as a Monitor received it.
type Event struct {
	Name string
	// Time is QEMU's timestamp: the host's wall clock, in microseconds, so
	// the events of two QEMUs on one host can be compared.
	Time time.Time
	// Status is data.status: a MIGRATION event's new state ("" for other
	// events).
	Status string
}

// EventLog is a list of events, oldest first.
type EventLog []Event

// First returns the first event named name at or after since; with status
// not "", only one with that status.
func (l EventLog) First(name, status string, since time.Time) (Event, bool) {
	for _, e := range l {
		if e.Name == name && (status == "" || e.Status == status) && !e.Time.Before(since) {
			return e, true
		}
	}
	return Event{}, false
}

// Last returns the last event named name between since and until (both
// included).
func (l EventLog) Last(name string, since, until time.Time) (Event, bool) {
	for i := len(l) - 1; i >= 0; i-- {
		e := l[i]
		if e.Name == name && !e.Time.Before(since) && !e.Time.After(until) {
			return e, true
		}
	}
	return Event{}, false
}

// eventRecord keeps a Monitor's last eventLogSize events and feeds the
// streams Events handed out. Its lock is never held across I/O: the reader
// must not stall replies on it.
type eventRecord struct {
	mu     sync.Mutex
	ring   []Event // up to eventLogSize; once full, next is the oldest
	next   int
	subs   map[chan qmp.Event]struct{}
	closed bool // the connection ended: streams are closed
}

// add records ev and passes raw to every stream that has room; a stream
// whose buffer is full misses it (streams are hints, the record is not).
func (r *eventRecord) add(ev Event, raw qmp.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.ring) < eventLogSize {
		r.ring = append(r.ring, ev)
	} else {
		r.ring[r.next] = ev
		r.next = (r.next + 1) % eventLogSize
	}
	for ch := range r.subs {
		select {
		case ch <- raw:
		default:
		}
	}
}

// log returns a copy of the record, oldest first.
func (r *eventRecord) log() EventLog {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(EventLog, 0, len(r.ring))
	out = append(out, r.ring[r.next:]...)
	return append(out, r.ring[:r.next]...)
}

func (r *eventRecord) subscribe(ctx context.Context) <-chan qmp.Event {
	ch := make(chan qmp.Event, 64)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		close(ch)
		return ch
	}
	if r.subs == nil {
		r.subs = map[chan qmp.Event]struct{}{}
	}
	r.subs[ch] = struct{}{}
	context.AfterFunc(ctx, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		if _, ok := r.subs[ch]; ok {
			delete(r.subs, ch)
			close(ch)
		}
	})
	return ch
}

// close ends every stream: no event comes after the connection's end.
func (r *eventRecord) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	for ch := range r.subs {
		close(ch)
	}
	r.subs = nil
}

// record files an event message the reader received.
func (m *Monitor) record(msg *message) {
	raw := qmp.Event{Event: msg.Event}
	_ = json.Unmarshal(msg.Data, &raw.Data)
	raw.Timestamp.Seconds, raw.Timestamp.Microseconds = msg.Timestamp.Seconds, msg.Timestamp.Microseconds
	ev := Event{Name: msg.Event, Time: time.Unix(msg.Timestamp.Seconds, msg.Timestamp.Microseconds*1000)}
	if s, ok := raw.Data["status"].(string); ok {
		ev.Status = s
	}
	m.events.add(ev, raw)
}

// RecentEvents returns the last events QEMU sent on this connection (at
// most eventLogSize), oldest first. Events are recorded as they arrive, in
// order with replies: once a command's reply is back, every event QEMU
// raised before it is here.
func (m *Monitor) RecentEvents() EventLog { return m.events.log() }

// Events is part of qmp.Monitor: a stream of the events arriving from now
// on, until ctx ends or the connection closes. Events arriving while its
// buffer is full are dropped from the stream (RecentEvents keeps them).
func (m *Monitor) Events(ctx context.Context) (<-chan qmp.Event, error) {
	return m.events.subscribe(ctx), nil
}
