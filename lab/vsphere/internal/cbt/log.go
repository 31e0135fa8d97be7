package cbt

import "sync"

// Log is the write history of one disk along one line of its history within
// one epoch. The sequence number grows by one per recorded write; a change id
// E/s means "everything up to and including write s of epoch E".
//
// A revert to a snapshot forks the snapshot's log (Fork): the disk's current
// change id goes back to the snapshot's, and the ids issued after it on the
// abandoned line become unknown. Sequence numbers are unique per epoch, across
// all its lines (the epoch's counter is shared by every fork), so an id never
// names two different histories: the first write after a revert gets the
// epoch's next number, not the snapshot's plus one.
//
// A Log is shared by the live disk and by every snapshot taken along its line,
// so it is safe for concurrent use.
type Log struct {
	epoch   Epoch
	counter *epochCounter

	mu     sync.Mutex
	seq    uint64
	floor  uint64 // change ids of this epoch below it are unknown (history lost)
	gaps   []span // change ids issued on abandoned lines (reverts): unknown here
	writes []logEntry
}

// epochCounter hands out an epoch's sequence numbers to all its lines.
type epochCounter struct {
	mu  sync.Mutex
	top uint64 // the highest sequence number issued in the epoch
}

func (c *epochCounter) next() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.top++
	return c.top
}

func (c *epochCounter) highest() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.top
}

// span is the closed range [from, to] of sequence numbers.
type span struct{ from, to uint64 }

type logEntry struct {
	seq    uint64
	blocks Extent
}

// NewLog starts an epoch at sequence 0.
func NewLog(e Epoch) *Log { return &Log{epoch: e, counter: &epochCounter{}} }

// Epoch returns the epoch this log belongs to.
func (l *Log) Epoch() Epoch { return l.epoch }

// Current returns the change id of the latest write.
func (l *Log) Current() ChangeID {
	l.mu.Lock()
	defer l.mu.Unlock()
	return ChangeID{Epoch: l.epoch, Seq: l.seq}
}

// Record notes a write of n bytes at off and returns the new change id.
func (l *Log) Record(off, n int64) ChangeID {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seq = l.counter.next()
	if n > 0 {
		l.writes = append(l.writes, logEntry{seq: l.seq, blocks: RoundOut(off, n, BlockSize)})
	}
	return ChangeID{Epoch: l.epoch, Seq: l.seq}
}

// LoseHistory forgets every write so far and moves the sequence on: change
// ids issued until now are no longer known (Knows), while the epoch and the
// ids issued from now on stay valid. It models a disk whose change tracking
// file lost its history without being reset.
func (l *Log) LoseHistory() ChangeID {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seq = l.counter.next()
	l.floor = l.seq
	l.writes = nil
	return ChangeID{Epoch: l.epoch, Seq: l.seq}
}

// Fork returns the line a revert to the point at (a change id this log issued
// or inherited) starts: same epoch, current id E/at, the writes up to at, and
// every id issued in the epoch after at — on this line or any other — unknown.
func (l *Log) Fork(at uint64) *Log {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := &Log{epoch: l.epoch, counter: l.counter, seq: at, floor: l.floor}
	f.gaps = append(f.gaps, l.gaps...)
	if top := l.counter.highest(); top > at {
		f.gaps = append(f.gaps, span{from: at + 1, to: top})
	}
	for _, w := range l.writes {
		if w.seq <= at {
			f.writes = append(f.writes, w)
		}
	}
	return f
}

// Knows says whether changes since sequence seq can still be answered.
func (l *Log) Knows(seq uint64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return seq >= l.floor && !l.abandonedLocked(seq)
}

// Abandoned says whether seq was issued on a line a revert left behind.
func (l *Log) Abandoned(seq uint64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.abandonedLocked(seq)
}

func (l *Log) abandonedLocked(seq uint64) bool {
	for _, g := range l.gaps {
		if seq >= g.from && seq <= g.to {
			return true
		}
	}
	return false
}

// Changed returns the areas written after sequence from up to and including
// sequence to, normalized against capacity.
func (l *Log) Changed(from, to uint64, capacity int64) []Extent {
	l.mu.Lock()
	var xs []Extent
	for _, w := range l.writes {
		if w.seq > from && w.seq <= to {
			xs = append(xs, w.blocks)
		}
	}
	l.mu.Unlock()
	return Normalize(xs, capacity)
}
