package qemu

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// TestEventRecord: events are recorded with QEMU's timestamp and a
// MIGRATION event's status, in order with replies; the record keeps the
// last eventLogSize; a stream gets the events after it was asked for and
// ends with the connection.
func TestEventRecord(t *testing.T) {
	const extra = 10
	path := fakeQEMU(t, func(cmd map[string]any) []string {
		switch cmd["execute"] {
		case "qmp_capabilities":
			return []string{`{"return": {}, "id": "ID"}`}
		case "flood":
			// More than the record keeps, then the reply.
			var out []string
			for i := range eventLogSize + extra {
				out = append(out, fmt.Sprintf(`{"event": "MIGRATION", "data": {"status": "s%d"}, "timestamp": {"seconds": 100, "microseconds": %d}}`, i, i))
			}
			return append(out, `{"return": {}, "id": "ID"}`)
		default:
			return []string{`{"event": "STOP", "data": {}, "timestamp": {"seconds": 200, "microseconds": 5}}`, `{"return": {}, "id": "ID"}`}
		}
	})
	ctx := context.Background()
	m, err := Dial(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if l := m.RecentEvents(); len(l) != 0 {
		t.Fatalf("events before any: %+v", l)
	}
	if err := m.Execute(ctx, "flood", nil, nil); err != nil {
		t.Fatal(err)
	}
	l := m.RecentEvents()
	if len(l) != eventLogSize {
		t.Fatalf("%d events kept, want the last %d", len(l), eventLogSize)
	}
	for i, e := range l {
		n := i + extra
		if e.Name != "MIGRATION" || e.Status != fmt.Sprintf("s%d", n) || !e.Time.Equal(time.Unix(100, int64(n)*1000)) {
			t.Fatalf("event %d is %+v, want MIGRATION s%d at 100 s + %d µs (oldest first)", i, e, n, n)
		}
	}
	evs, _ := m.Events(ctx)
	if err := m.Execute(ctx, "stop", nil, nil); err != nil {
		t.Fatal(err)
	}
	if l := m.RecentEvents(); l[len(l)-1].Name != "STOP" || l[len(l)-1].Status != "" || l[0].Status != fmt.Sprintf("s%d", extra+1) {
		t.Fatalf("after STOP: first %+v, last %+v", l[0], l[len(l)-1])
	}
	select {
	case ev := <-evs:
		if ev.Event != "STOP" || ev.Timestamp.Seconds != 200 {
			t.Fatalf("streamed %+v, want the STOP only (the flood came before the stream)", ev)
		}
	case <-time.After(time.Second):
		t.Fatal("no STOP on the stream")
	}
	m.Close()
	select {
	case _, open := <-evs:
		if open {
			t.Fatal("an event on the stream after the connection closed")
		}
	case <-time.After(time.Second):
		t.Fatal("stream still open after the connection closed")
	}
}
