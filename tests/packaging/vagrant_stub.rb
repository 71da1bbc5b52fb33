# Evaluates a Vagrantfile without Vagrant (tests/packaging.rs): a stand-in
# `Vagrant.configure` records each machine's name, private network address
# and provisioners, printed as JSON. Every other setting is accepted as is.
#   ruby vagrant_stub.rb PATH/Vagrantfile
require "json"

$machines = []

# Takes any setting (box, memory, synced_folder, ...) and ignores it.
class Anything
  def method_missing(*) = self
  def respond_to_missing?(*) = true
end

class VmSettings < Anything
  def initialize(machine)
    @machine = machine
  end

  def define(name)
    machine = { "name" => name, "ips" => [], "provision" => [] }
    $machines << machine
    yield MachineConfig.new(machine)
  end

  def network(kind, **opts)
    @machine["ips"] << opts[:ip] if @machine && kind == "private_network"
  end

  def provision(kind, **opts)
    return unless @machine
    @machine["provision"] << opts.transform_keys(&:to_s).merge("kind" => kind)
  end

  def provider(*)
    yield Anything.new if block_given?
  end
end

class MachineConfig < Anything
  def initialize(machine = nil)
    @vm = VmSettings.new(machine)
  end

  attr_reader :vm
end

module Vagrant
  def self.configure(version)
    raise "configure(#{version.inspect}): expected \"2\"" unless version == "2"
    yield MachineConfig.new
  end
end

load ARGV.fetch(0)
puts JSON.generate($machines)
