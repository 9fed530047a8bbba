//go:build !linux

package onnx

import (
	"errors"
	"os"
)

// mapFile is not implemented outside Linux: Load reads the file instead.
func mapFile(*os.File, int) ([]byte, error) { return nil, errors.ErrUnsupported }

// unmapFile is never called outside Linux, since mapFile fails.
func unmapFile([]byte) error { return errors.ErrUnsupported }

// pageOut does nothing where models are not mapped.
func pageOut([]byte) {}
