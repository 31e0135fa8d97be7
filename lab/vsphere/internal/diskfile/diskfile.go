// Package diskfile holds the raw-image file operations of the lab simulator:
// sparse sizing, point-in-time copies (reflink when the filesystem can,
// otherwise a sparse copy that skips holes) and listing allocated extents.
//
// Invariant: no operation here ever allocates the holes of a sparse file; a
// 10 GiB disk with 1 MiB written costs 1 MiB on the host.
package diskfile

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
)

const (
	seekData = 3 // SEEK_DATA, not exported by package syscall
	seekHole = 4 // SEEK_HOLE
	ficlone  = 0x40049409
)

// Extent is an allocated byte range of a file.
type Extent struct {
	Start, Length int64
}

// EnsureSize creates path if needed and grows it (sparsely) to at least size.
// It never shrinks a file.
func EnsureSize(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.Size() < size {
		return f.Truncate(size)
	}
	return nil
}

// Copy makes dst a point-in-time copy of src with the given size (src is cut
// or sparsely extended). The copy is written to a temporary file next to dst
// and renamed into place, so dst is never seen half-written.
func Copy(src, dst string, size int64) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".*")
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := clone(in, tmp); err != nil {
		if err := sparseCopy(in, tmp, size); err != nil {
			return fmt.Errorf("copy %s: %w", src, err)
		}
	}
	if err := tmp.Truncate(size); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return err
	}
	ok = true
	return nil
}

// clone shares all blocks of in with out (FICLONE); it fails on filesystems
// without reflinks, such as ext4.
func clone(in, out *os.File) error {
	_, _, errno := syscall.Syscall(syscall.SYS_IOCTL, out.Fd(), ficlone, in.Fd())
	if errno != 0 {
		return errno
	}
	return nil
}

// sparseCopy copies the allocated extents of in below limit; holes stay holes.
func sparseCopy(in, out *os.File, limit int64) error {
	st, err := in.Stat()
	if err != nil {
		return err
	}
	extents, err := DataExtents(in, 0, min(st.Size(), limit))
	if err != nil {
		return err
	}
	for _, e := range extents {
		if _, err := in.Seek(e.Start, io.SeekStart); err != nil {
			return err
		}
		if _, err := out.Seek(e.Start, io.SeekStart); err != nil {
			return err
		}
		// *os.File.ReadFrom uses copy_file_range for a LimitedReader of a file.
		if _, err := io.Copy(out, io.LimitReader(in, e.Length)); err != nil {
			return err
		}
	}
	return nil
}

// DataExtents lists the allocated extents of f that intersect [start, end),
// clipped to that range, using SEEK_DATA/SEEK_HOLE.
func DataExtents(f *os.File, start, end int64) ([]Extent, error) {
	var out []Extent
	fd := int(f.Fd())
	for pos := start; pos < end; {
		data, err := syscall.Seek(fd, pos, seekData)
		if errors.Is(err, syscall.ENXIO) {
			break // no data after pos
		}
		if err != nil {
			return nil, err
		}
		if data >= end {
			break
		}
		hole, err := syscall.Seek(fd, data, seekHole)
		if err != nil {
			return nil, err
		}
		hole = min(hole, end)
		out = append(out, Extent{Start: data, Length: hole - data})
		pos = hole
	}
	return out, nil
}
