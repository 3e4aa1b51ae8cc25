// berth-nri-test-plugin: an NRI plugin for berth's tests, built on NRI's own plugin stub
// (github.com/containerd/nri/pkg/stub), so that berth is tested against the library real
// plugins use. It records every event it gets, adjusts containers as their pod's
// annotations ask, and misbehaves (hangs, crashes, refuses) on the events its
// configuration names.
//
// Configuration (JSON: the plugin's NRI configuration when berth starts it from its plugin
// directory, or the file named by -config when started by hand):
//
//	{"events": "/path/events.jsonl", "hang": ["CreateContainer"], "crash": ["StartContainer"],
//	 "refuse": ["CreateContainer"]}
//
// Pod annotations, for the container named <c>:
//
//	test.nri.berth/env.<c>      "KEY=value"              adds (or replaces) a variable
//	test.nri.berth/unset.<c>    "KEY"                    removes a variable
//	test.nri.berth/mount.<c>    "/host/path:/in/ctr"     adds a read-only bind mount
//	test.nri.berth/device.<c>   "/dev/name"              adds a char device 1:3 (/dev/null's)
//	test.nri.berth/rlimit.<c>   "RLIMIT_NOFILE:512:1024" sets a limit (soft:hard)
//	test.nri.berth/memory.<c>   "67108864"               sets the memory limit (bytes)
//	test.nri.berth/hook.<c>     "/path/to/hook"          adds a createRuntime hook
//	test.nri.berth/annotate.<c> "key=value"              adds an annotation to the spec
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"
)

type config struct {
	Events string   `json:"events"`
	Hang   []string `json:"hang"`
	Crash  []string `json:"crash"`
	Refuse []string `json:"refuse"`
}

type plugin struct {
	mu  sync.Mutex
	cfg config
}

type record struct {
	Event     string `json:"event"`
	Pod       string `json:"pod"`
	PodID     string `json:"pod_id"`
	Container string `json:"container,omitempty"`
	ID        string `json:"id,omitempty"`
	Pid       uint32 `json:"pid,omitempty"`
	Time      int64  `json:"time"`
}

const prefix = "test.nri.berth/"

func (p *plugin) Configure(_ context.Context, cfg, runtime, version string) (stub.EventMask, error) {
	if cfg != "" {
		p.mu.Lock()
		err := json.Unmarshal([]byte(cfg), &p.cfg)
		p.mu.Unlock()
		if err != nil {
			return 0, fmt.Errorf("bad configuration: %w", err)
		}
	}
	p.note("Configure", nil, nil)
	return 0, nil // every event
}

func has(list []string, e string) bool {
	for _, x := range list {
		if x == e {
			return true
		}
	}
	return false
}

// note records event e, then misbehaves as configured.
func (p *plugin) note(e string, pod *api.PodSandbox, ctr *api.Container) error {
	p.mu.Lock()
	cfg := p.cfg
	if cfg.Events != "" {
		r := record{Event: e, Time: time.Now().UnixNano()}
		if pod != nil {
			r.Pod, r.PodID = pod.GetName(), pod.GetId()
		}
		if ctr != nil {
			r.Container, r.ID, r.Pid = ctr.GetName(), ctr.GetId(), ctr.GetPid()
		}
		if b, err := json.Marshal(r); err == nil {
			if f, err := os.OpenFile(cfg.Events, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
				f.Write(append(b, '\n'))
				f.Close()
			}
		}
	}
	p.mu.Unlock()
	if has(cfg.Crash, e) {
		os.Exit(3)
	}
	if has(cfg.Hang, e) {
		select {}
	}
	if has(cfg.Refuse, e) {
		return fmt.Errorf("test plugin refuses %s", e)
	}
	return nil
}

func (p *plugin) Synchronize(_ context.Context, pods []*api.PodSandbox, ctrs []*api.Container) ([]*api.ContainerUpdate, error) {
	return nil, p.note("Synchronize", nil, nil)
}

func (p *plugin) RunPodSandbox(_ context.Context, pod *api.PodSandbox) error {
	return p.note("RunPodSandbox", pod, nil)
}

func (p *plugin) StopPodSandbox(_ context.Context, pod *api.PodSandbox) error {
	return p.note("StopPodSandbox", pod, nil)
}

func (p *plugin) RemovePodSandbox(_ context.Context, pod *api.PodSandbox) error {
	return p.note("RemovePodSandbox", pod, nil)
}

func (p *plugin) CreateContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate, error) {
	if err := p.note("CreateContainer", pod, ctr); err != nil {
		return nil, nil, err
	}
	a := &api.ContainerAdjustment{}
	get := func(what string) (string, bool) {
		v, ok := pod.GetAnnotations()[prefix+what+"."+ctr.GetName()]
		return v, ok
	}
	if v, ok := get("env"); ok {
		k, val, _ := strings.Cut(v, "=")
		a.AddEnv(k, val)
	}
	if v, ok := get("unset"); ok {
		a.RemoveEnv(v)
	}
	if v, ok := get("mount"); ok {
		src, dst, _ := strings.Cut(v, ":")
		a.AddMount(&api.Mount{Source: src, Destination: dst, Type: "bind", Options: []string{"rbind", "ro"}})
	}
	if v, ok := get("device"); ok {
		a.AddDevice(&api.LinuxDevice{Path: v, Type: "c", Major: 1, Minor: 3, FileMode: &api.OptionalFileMode{Value: 0o666}})
	}
	if v, ok := get("rlimit"); ok {
		f := strings.Split(v, ":")
		if len(f) == 3 {
			soft, _ := strconv.ParseUint(f[1], 10, 64)
			hard, _ := strconv.ParseUint(f[2], 10, 64)
			a.AddRlimit(f[0], hard, soft)
		}
	}
	if v, ok := get("memory"); ok {
		n, _ := strconv.ParseInt(v, 10, 64)
		a.SetLinuxMemoryLimit(n)
	}
	if v, ok := get("hook"); ok {
		a.AddHooks(&api.Hooks{CreateRuntime: []*api.Hook{{Path: v, Args: []string{v}}}})
	}
	if v, ok := get("annotate"); ok {
		k, val, _ := strings.Cut(v, "=")
		a.AddAnnotation(k, val)
	}
	return a, nil, nil
}

func (p *plugin) PostCreateContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) error {
	return p.note("PostCreateContainer", pod, ctr)
}

func (p *plugin) StartContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) error {
	return p.note("StartContainer", pod, ctr)
}

func (p *plugin) PostStartContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) error {
	return p.note("PostStartContainer", pod, ctr)
}

func (p *plugin) UpdateContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container, _ *api.LinuxResources) ([]*api.ContainerUpdate, error) {
	return nil, p.note("UpdateContainer", pod, ctr)
}

func (p *plugin) PostUpdateContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) error {
	return p.note("PostUpdateContainer", pod, ctr)
}

func (p *plugin) StopContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) ([]*api.ContainerUpdate, error) {
	return nil, p.note("StopContainer", pod, ctr)
}

func (p *plugin) RemoveContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) error {
	return p.note("RemoveContainer", pod, ctr)
}

func main() {
	var (
		name, idx, socket, cfgFile string
	)
	flag.StringVar(&name, "name", "", "plugin name (started by hand)")
	flag.StringVar(&idx, "idx", "", "plugin index (started by hand)")
	flag.StringVar(&socket, "socket", "", "the runtime's NRI socket (started by hand)")
	flag.StringVar(&cfgFile, "config", "", "configuration file (started by hand)")
	flag.Parse()

	p := &plugin{}
	if cfgFile != "" {
		b, err := os.ReadFile(cfgFile)
		if err == nil {
			err = json.Unmarshal(b, &p.cfg)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "config %s: %v\n", cfgFile, err)
			os.Exit(1)
		}
	}
	var opts []stub.Option
	if name != "" {
		opts = append(opts, stub.WithPluginName(name))
	}
	if idx != "" {
		opts = append(opts, stub.WithPluginIdx(idx))
	}
	if socket != "" {
		opts = append(opts, stub.WithSocketPath(socket))
	}
	s, err := stub.New(p, opts...)
	if err != nil {
		fmt.Fprintf(os.Stderr, "create stub: %v\n", err)
		os.Exit(1)
	}
	if err := s.Run(context.Background()); err != nil {
		fmt.Fprintf(os.Stderr, "plugin exited: %v\n", err)
		os.Exit(1)
	}
}
