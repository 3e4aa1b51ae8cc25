// berth-estargz converts an image layer (a tar, plain, gzip or zstd) into an eStargz blob
// with the upstream estargz package (github.com/containerd/stargz-snapshotter/estargz), so
// that berth's lazy-pull tests and benchmarks read the real format, not one berth made.
//
//	berth-estargz -in layer.tar -out layer.esgz [-prioritize bin/app,etc/app.conf] [-chunk-size N]
//
// Prints one JSON object: the blob's digest and size, its diff ID and its TOC digest (the
// value of the containerd.io/snapshot/stargz/toc.digest annotation).
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/containerd/stargz-snapshotter/estargz"
)

func main() {
	in := flag.String("in", "", "the layer: a tar, plain, gzip or zstd")
	out := flag.String("out", "", "where to write the eStargz blob")
	prioritize := flag.String("prioritize", "", "comma-separated paths to put before the prefetch landmark")
	chunkSize := flag.Int("chunk-size", 0, "bytes per chunk (0: the package's default)")
	flag.Parse()
	if err := run(*in, *out, *prioritize, *chunkSize); err != nil {
		fmt.Fprintln(os.Stderr, "berth-estargz:", err)
		os.Exit(1)
	}
}

func run(in, out, prioritize string, chunkSize int) error {
	if in == "" || out == "" {
		return fmt.Errorf("-in and -out are required")
	}
	f, err := os.Open(in)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	var opts []estargz.Option
	if prioritize != "" {
		opts = append(opts, estargz.WithPrioritizedFiles(strings.Split(prioritize, ",")))
	}
	if chunkSize > 0 {
		opts = append(opts, estargz.WithChunkSize(chunkSize))
	}
	blob, err := estargz.Build(io.NewSectionReader(f, 0, st.Size()), opts...)
	if err != nil {
		return err
	}
	o, err := os.Create(out)
	if err != nil {
		blob.Close()
		return err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(o, h), blob)
	if cerr := blob.Close(); err == nil {
		err = cerr
	}
	if cerr := o.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(map[string]any{
		"digest":    "sha256:" + hex.EncodeToString(h.Sum(nil)),
		"size":      n,
		"diffID":    blob.DiffID().String(),
		"tocDigest": blob.TOCDigest().String(),
	})
}
