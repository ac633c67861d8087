// mkimage assembles a single-layer image as a docker-archive tarball (the `docker save`
// layout), which `ctr -n k8s.io images import` loads into containerd -- no registry and no
// image builder needed. Files are added with fixed owners and timestamps, so the output is
// reproducible.
//
//	mkimage -o out.tar -tag kinfer.local/pause:3.10 -add bin/pause:/pause -entrypoint /pause
//	mkimage -o out.tar -tag x:1 -dir rootfs/:/ -env PATH=/usr/bin -entrypoint "/app serve"
package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(s string) error { *l = append(*l, s); return nil }

var epoch = time.Unix(946684800, 0) // 2000-01-01, fixed for reproducibility

type entry struct {
	hdr  tar.Header
	data []byte
}

func main() {
	var tags, adds, dirs, envs list
	out := flag.String("o", "", "output tarball")
	entrypoint := flag.String("entrypoint", "", "entrypoint, split on spaces")
	cmd := flag.String("cmd", "", "cmd, split on spaces")
	workdir := flag.String("workdir", "/", "working directory")
	user := flag.String("user", "", "user (e.g. 65532:65532)")
	flag.Var(&tags, "tag", "repo:tag (repeatable)")
	flag.Var(&adds, "add", "SRC:DST[:MODE] regular file (repeatable)")
	flag.Var(&dirs, "dir", "SRCDIR:DSTDIR directory tree (repeatable)")
	flag.Var(&envs, "env", "K=V (repeatable)")
	flag.Parse()
	if *out == "" || len(tags) == 0 {
		fatal(fmt.Errorf("-o and -tag are required"))
	}
	files := map[string]*entry{}
	addDir := func(p string, mode int64) {
		for p = path.Clean(p); p != "/" && p != "."; p = path.Dir(p) {
			name := strings.TrimPrefix(p, "/") + "/"
			if _, ok := files[name]; !ok {
				files[name] = &entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode}}
			}
		}
	}
	addFile := func(src, dst string, mode int64) {
		b, err := os.ReadFile(src)
		fatal(err)
		if mode == 0 {
			st, err := os.Stat(src)
			fatal(err)
			mode = int64(st.Mode().Perm())
		}
		addDir(path.Dir(dst), 0o755)
		name := strings.TrimPrefix(path.Clean(dst), "/")
		files[name] = &entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(b))}, data: b}
	}
	for _, d := range []string{"/tmp", "/etc", "/dev", "/proc", "/sys"} {
		addDir(d, 0o755)
	}
	files["tmp/"].hdr.Mode = 0o1777
	for _, a := range adds {
		parts := strings.Split(a, ":")
		if len(parts) < 2 {
			fatal(fmt.Errorf("bad -add %q", a))
		}
		var mode int64
		if len(parts) > 2 {
			fmt.Sscanf(parts[2], "%o", &mode)
		}
		addFile(parts[0], parts[1], mode)
	}
	for _, d := range dirs {
		parts := strings.SplitN(d, ":", 2)
		if len(parts) != 2 {
			fatal(fmt.Errorf("bad -dir %q", d))
		}
		root := parts[0]
		fatal(filepath.WalkDir(root, func(p string, de fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			dst := path.Join(parts[1], filepath.ToSlash(rel))
			info, err := de.Info()
			if err != nil {
				return err
			}
			switch {
			case de.IsDir():
				addDir(dst, int64(info.Mode().Perm()))
			case info.Mode()&fs.ModeSymlink != 0:
				t, err := os.Readlink(p)
				if err != nil {
					return err
				}
				addDir(path.Dir(dst), 0o755)
				name := strings.TrimPrefix(path.Clean(dst), "/")
				files[name] = &entry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: t, Mode: 0o777}}
			case info.Mode().IsRegular():
				addFile(p, dst, int64(info.Mode().Perm()))
			}
			return nil
		}))
	}

	// The layer.
	var names []string
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	for _, n := range names {
		e := files[n]
		e.hdr.ModTime, e.hdr.Format = epoch, tar.FormatPAX
		fatal(tw.WriteHeader(&e.hdr))
		if e.data != nil {
			_, err := tw.Write(e.data)
			fatal(err)
		}
	}
	fatal(tw.Close())
	layerSum := sha256.Sum256(layer.Bytes())
	layerHex := hex.EncodeToString(layerSum[:])

	split := func(s string) []string {
		if s == "" {
			return nil
		}
		return strings.Fields(s)
	}
	cfg := map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"created":      epoch.UTC().Format(time.RFC3339),
		"config": map[string]any{
			"Entrypoint": split(*entrypoint),
			"Cmd":        split(*cmd),
			"Env":        []string(envs),
			"WorkingDir": *workdir,
			"User":       *user,
		},
		"rootfs":  map[string]any{"type": "layers", "diff_ids": []string{"sha256:" + layerHex}},
		"history": []map[string]any{{"created": epoch.UTC().Format(time.RFC3339), "created_by": "kinfer mkimage"}},
	}
	cfgJSON, err := json.Marshal(cfg)
	fatal(err)
	cfgSum := sha256.Sum256(cfgJSON)
	cfgName := hex.EncodeToString(cfgSum[:]) + ".json"
	manifest, err := json.Marshal([]map[string]any{{
		"Config": cfgName, "RepoTags": []string(tags), "Layers": []string{layerHex + "/layer.tar"},
	}})
	fatal(err)

	f, err := os.Create(*out + ".tmp")
	fatal(err)
	ow := tar.NewWriter(f)
	put := func(name string, b []byte) {
		fatal(ow.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(b)), ModTime: epoch}))
		_, err := ow.Write(b)
		fatal(err)
	}
	fatal(ow.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: layerHex + "/", Mode: 0o755, ModTime: epoch}))
	put(layerHex+"/layer.tar", layer.Bytes())
	put(cfgName, cfgJSON)
	put("manifest.json", manifest)
	fatal(ow.Close())
	fatal(f.Close())
	fatal(os.Rename(*out+".tmp", *out))
	fmt.Printf("%s: %s (config sha256:%s)\n", *out, strings.Join(tags, " "), strings.TrimSuffix(cfgName, ".json"))
}

func fatal(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}
