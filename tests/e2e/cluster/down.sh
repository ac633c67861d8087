#!/usr/bin/env bash
# Stop the local cluster and remove everything cluster-up made: processes (ended by their
# recorded PIDs), pod sandboxes and their network namespaces, mounts under the cluster dir,
# iptables chains (kube-proxy's, CNI's, KINFER-GUARD), the cni0 and kinfer0 links, the kubepods
# cgroups, and the cluster dir itself. Safe to run when nothing is up. Binaries stay cached.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "$HERE/lib.sh"
[[ $EUID == 0 ]] || die "cluster-down needs root"
D="$KINFER_CLUSTER_DIR"
T0=$SECONDS

pid_of() { [[ -f "$D/pids/$1.pid" ]] && cat "$D/pids/$1.pid"; }
alive() { local p; p=$(pid_of "$1") && [[ -n "$p" ]] && pid_running "$p"; }
stop() { # name... : SIGTERM the recorded PIDs (and process groups) together, SIGKILL after 10s
  local name p i t=$SECONDS pids=(); local -A names=()
  for name in "$@"; do
    p=$(pid_of "$name") || continue
    if pid_running "$p"; then
      kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null
      pids+=("$p"); names[$p]=$name
    fi
    rm -f "$D/pids/$name.pid"
  done
  for ((i = 0; i < 200; i++)); do
    local left=()
    for p in "${pids[@]}"; do pid_running "$p" && left+=("${names[$p]}:$p"); done
    ((${#left[@]})) || break
    if ((i == 100)); then
      log "still running after SIGTERM, sending SIGKILL: ${left[*]}"
      for p in "${left[@]}"; do p=${p#*:}; kill -KILL -- "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null; done
    fi
    sleep 0.1
  done
  ((SECONDS - t < 3)) || log "stopping $* took $((SECONDS - t))s"
}

if [[ -d "$D" ]]; then
  # 1. No new pods: stop the controllers and the scheduler, then ask the kubelet to tear every pod
  #    down (that runs the CNI DEL and removes the network namespaces properly).
  #    KEDA's operator is a controller too (it scales Deployments).
  stop kustomize-controller source-controller git-http keda-operator kube-controller-manager kube-scheduler
  if alive kubelet && alive kube-apiserver && [[ -f "$KUBECONFIG_PATH" ]]; then
    kc delete pods --all --all-namespaces --grace-period=0 --force --wait=false >/dev/null 2>&1 || true
    end=$((SECONDS + 30))
    while ((SECONDS < end)); do
      n=$(ctr --address "$CONTAINERD_SOCK" -n k8s.io tasks ls -q 2>/dev/null | wc -l)
      [[ $n == 0 ]] && break
      sleep 1
    done
  fi
  stop kubelet kube-proxy
  # 2. Whatever is still running in containerd: kill the tasks, then containerd itself.
  if alive containerd; then
    C=(ctr --address "$CONTAINERD_SOCK" -n k8s.io)
    for t in $("${C[@]}" tasks ls -q 2>/dev/null); do "${C[@]}" tasks kill -s SIGKILL "$t" >/dev/null 2>&1; done
    sleep 1
    for t in $("${C[@]}" tasks ls -q 2>/dev/null); do "${C[@]}" tasks delete -f "$t" >/dev/null 2>&1; done
    stop containerd
  fi
  # containerd-shim processes outlive containerd by design: end the ones serving this cluster.
  for p in $(pgrep -f "containerd-shim-runc-v2 .*-address $CONTAINERD_SOCK" 2>/dev/null); do
    kill -KILL "$p" 2>/dev/null
  done
  # Every other recorded process (monitoring.sh's, autoscaling.sh's, tracing.sh's, whatever a later
  # script adds), all together, before the API server they talk to; then the API server and etcd.
  others=()
  for f in "$D"/pids/*.pid; do
    [[ -e "$f" ]] || continue
    case "$(basename "$f" .pid)" in s3 | kube-apiserver | etcd) ;; *) others+=("$(basename "$f" .pid)") ;; esac
  done
  ((${#others[@]} == 0)) || stop "${others[@]}"
  stop s3 kube-apiserver
  stop etcd
  for f in "$D"/pids/*.pid; do [[ -e "$f" ]] && stop "$(basename "$f" .pid)"; done
fi

# 3. Network namespaces made for pods (present now, absent before cluster-up).
for nsp in /run/netns/cni-*; do
  [[ -e $nsp ]] || continue
  ns=${nsp##*/}
  if [[ -f "$D/netns.before" ]] && grep -qx "$ns" "$D/netns.before"; then continue; fi
  ip netns delete "$ns" 2>/dev/null || { umount -l "/run/netns/$ns" 2>/dev/null; rm -f "/run/netns/$ns"; }
done

# 4. Mounts under the cluster dir (overlay rootfs, shm, kubelet volumes), deepest first.
if [[ -d "$D" ]]; then
  while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
  done < <(awk -v d="$D/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r)
fi

# 5. iptables: kube-proxy's own cleanup, then any KUBE-/CNI- chain left, then our guard.
exec 3>&2 2>/dev/null   # iptables-nft warns about legacy tables on every save: keep it quiet
if [[ -x "$K8S_BIN/kube-proxy" ]] && { iptables-save; ip6tables-save; } | grep -q '^:KUBE-'; then
  "$K8S_BIN/kube-proxy" --cleanup --v 0 >/dev/null 2>&1 || true
fi
for ipt in iptables ip6tables; do
  for table in filter nat mangle; do
    chains=$($ipt-save -t "$table" 2>/dev/null | awk '/^:(KUBE-|CNI-|KINFER-)/ {print substr($1, 2)}')
    [[ -n "$chains" ]] || continue
    # drop every rule that jumps to one of them, then flush and delete the chains
    $ipt-save -t "$table" | grep -E '^-A ' | grep -E -- '-j (KUBE-|CNI-|KINFER-)' | while read -r line; do
      eval "$ipt -t $table -D ${line#-A }" 2>/dev/null
    done
    for c in $chains; do $ipt -t "$table" -F "$c" 2>/dev/null; done
    for c in $chains; do $ipt -t "$table" -X "$c" 2>/dev/null; done
  done
done

exec 2>&3 3>&-

# 6. Links, routes, sysctls.
ip link del cni0 2>/dev/null
ip route del "$SERVICE_CIDR" dev kinfer0 2>/dev/null
ip link del kinfer0 2>/dev/null
if [[ -f "$D/ip_forward.orig" ]]; then sysctl -qw "net.ipv4.ip_forward=$(cat "$D/ip_forward.orig")"; fi

# 7. cgroups the kubelet made (cgroupfs driver): end any process still in them, then remove the
#    (now empty) kubepods trees.
while read -r f; do
  while read -r p; do kill -KILL "$p" 2>/dev/null; done <"$f"
done < <(find /sys/fs/cgroup/*/kubepods -name cgroup.procs 2>/dev/null)
for sub in /sys/fs/cgroup/*/; do
  [[ -d "$sub/kubepods" ]] || continue
  find "$sub/kubepods" -depth -type d -exec rmdir {} \; 2>/dev/null
done

# 8. State: host paths that cluster-up created (nothing is mounted there any more), pod logs,
#    and the cluster dir.
if [[ -f "$D/host-paths.created" ]]; then
  while read -r p; do
    [[ -n $p && " ${HOST_PATHS[*]} " == *" $p "* ]] || continue
    awk -v d="$p/" 'index($5, d) == 1 {found = 1} END {exit !found}' /proc/self/mountinfo || rm -rf "$p"
  done <"$D/host-paths.created"
fi
[[ -d /var/log/pods ]] && find /var/log/pods -mindepth 1 -maxdepth 1 -exec rm -rf {} + 2>/dev/null
[[ -d /var/log/containers ]] && find /var/log/containers -mindepth 1 -maxdepth 1 -exec rm -rf {} + 2>/dev/null
rm -rf "$D"
log "cluster down in $((SECONDS - T0))s"
