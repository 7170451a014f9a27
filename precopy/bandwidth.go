package precopy

import (
	"github.com/dmig/dmig/internal/bandwidth"
	"github.com/dmig/dmig/wire"
)

// pace makes the session's page traffic draw from l: the bulk connections
// (passes and the post-copy push) wait for its tokens, the urgent one
// (fault replies) goes ahead up to its budget. The control connection is
// not paced: its frames are few, and the switchover's (device state) are
// inside the downtime.
func pace(sess *wire.Session, l *bandwidth.Limiter) {
	for _, c := range sess.Bulk {
		c.SetPacer(l.Bulk())
	}
	if sess.Urgent != nil {
		sess.Urgent.SetPacer(l.Urgent())
	}
}
