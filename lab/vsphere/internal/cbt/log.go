package cbt

import "sync"

// Log is the append-only write history of one disk within one epoch. The
// sequence number grows by one per recorded write; a change id E/s means
// "everything up to and including write s of epoch E".
//
// A Log is shared by the live disk and by every snapshot taken during its
// epoch, so it is safe for concurrent use.
type Log struct {
	epoch Epoch

	mu     sync.Mutex
	seq    uint64
	floor  uint64 // change ids of this epoch below it are unknown (history lost)
	writes []logEntry
}

type logEntry struct {
	seq    uint64
	blocks Extent
}

// NewLog starts an epoch at sequence 0.
func NewLog(e Epoch) *Log { return &Log{epoch: e} }

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
	l.seq++
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
	l.seq++
	l.floor = l.seq
	l.writes = nil
	return ChangeID{Epoch: l.epoch, Seq: l.seq}
}

// Knows says whether changes since sequence seq can still be answered.
func (l *Log) Knows(seq uint64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return seq >= l.floor
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
