// An emulated Raspberry Pi Pico: the RP2040's boot ROM and the Pico's own
// MicroPython, run instruction by instruction by rp2040js, with what that
// emulator lacks for a board that keeps files and resets like a Pico:
//
//  - a serial NOR flash (W25Q16JV, 2 MB) behind the SSI, programmed and
//    erased by the commands the boot ROM and the SDK send, its image kept in
//    a file so it survives resets and power cycles;
//  - chip resets: the watchdog (machine.WDT, machine.reset()) and a power
//    cycle build a new chip that runs the boot ROM again, keeping what a
//    real chip keeps (flash; after a watchdog reset, its scratch registers
//    and reason), and VREG_AND_CHIP_RESET says which;
//  - the USB CDC port on a socket (descriptor 3, or --usb-fd), lossless both ways: a host
//    that sends faster than the board reads is paused, and a host that
//    reads slower than the board writes pauses the board;
//  - fast-forward while the core sleeps (WFI/WFE) until its next alarm;
//  - the PIO blocks stepped in system clock cycles (rp2040js runs them on a
//    wall-clock timer), core 1 as core 0 sees it, pads out of reset as the
//    datasheet has them, the UARTs' transmit interrupt as a PL011's, and
//    DMA at one transfer a cycle;
//  - the wiring to the plant: pins and ADC driven at board times, outputs'
//    edges and PWM setpoints reported (board.py wires them to the plant).
//
// Control on stdin, events on stdout: one JSON object per line.
//   in:  {"op":"power","on":false} | {"op":"power","on":true} | {"op":"time"} | {"op":"quit"}
//        {"op":"pins","levels":{"16":1,...},"at_ns":N?}  input pins driven from outside, at board
//                                            time N (ns; now, or at once if past)
//        {"op":"adc","values":{"0":N,...},"at_ns":N?}    ADC channels' 12-bit readings from then on
//        {"op":"watch","pins":[15,...],"hold_on_rise":bool}  report these pins' edges (and hold the
//                                            chip at a rise, for the host to answer it in time)
//        {"op":"pins_schedule","points":[[ns,{"16":1,...}],...]}  input levels from those board times,
//                                            replacing any schedule not yet reached (kept across resets)
//        {"op":"adc_schedule","points":[[ns,{"0":N,...}],...]}  ADC readings from those board times,
//                                            replacing any schedule not yet reached
//        {"op":"hold"} | {"op":"release"}     stop the chip where it is (board time stands still),
//                                            answered {"ev":"held","ns":N}; and go on
//        {"op":"release_rise"}               go on after a hold_on_rise pin's rise (a hold of its own)
//        {"op":"bus","on":true}              the detector's front end on GP0-GP11: each first line of a
//                                            frame (LINE_SYNC) holds the chip and asks for the frame
//        {"op":"frame","lines":L,"pixels":P,"data":B64}  the frame asked for (12-bit pixels, uint16
//                                            little-endian, line by line), and go on: each PIX_CLK rise
//                                            puts its next pixel on GP0-GP11
//        {"op":"stall","at_ns":N,"for_ns":D}  from board time N the core hangs for D ns, as a control
//                                            loop stuck in a loop would: the clock, timers, DMA, PIO and
//                                            watchdog go on (answered {"ev":"stall","ns":N} when it begins)
//        {"op":"debug"}                      answered {"ev":"debug",...}: the core's PC and state
//   out: {"ev":"boot","cause":"power-on"|"watchdog"|"force","us":N,"pc":N?,"lr":N?}
//                                            (pc, lr: where a watchdog reset found the program)
//        {"ev":"time","us":N,"wall_ms":N}  (every 50 ms of wall time, and when asked)
//        {"ev":"off","us":N}
//        {"ev":"pin","pin":N,"level":0|1,"ns":N,"sm":{"x":N,"y":N}?}  an edge of a watched pin, at
//                                            its cycle (a hold_on_rise pin's rise: the scratch registers
//                                            of the state machine whose side-set drives it)
//        {"ev":"frame","lines":L,"pixels":P,"ns":N}  the front end's next frame is due (its first
//                                            LINE_SYNC), of the geometry the readout's DMA and line
//                                            word give; the chip is held until the frame comes
//        {"ev":"pwm","slice":N,"cc":N,"top":N,"ns":N}  a PWM slice's compare or top written
//
// Usage: node emulator.mjs --bootrom ROM --uf2 UF2 --flash IMAGE [--usb-fd N] [--unique-id HEX16]

import fs from 'node:fs';
import net from 'node:net';
import readline from 'node:readline';
import { RP2040, USBCDC, ConsoleLogger, LogLevel } from 'rp2040js';
import { BasePeripheral } from 'rp2040js';

const FLASH_BYTES = 2 * 1024 * 1024; // the Pico's W25Q16JV
const FLASH_BASE = 0x10000000;
const NS_PER_CYCLE = 8; // 125 MHz
const PIO_STRIDE = 64; // cycles stepped at a time while the core sleeps and a state machine runs
const SLICE_MS = 20; // wall time per turn of the run loop before Node's I/O gets a turn
const HOST_IN_HIGH_WATER = 64 * 1024; // host bytes queued for the board before the host is paused
const HOST_OUT_HIGH_WATER = 256 * 1024; // board bytes queued for the host before the board is paused
// The detector's front end (docs/board.md's pin map): a 12-bit pixel on
// GP0-GP11, LINE_SYNC on GP12 and PIX_CLK on GP13 from the readout state
// machine (PIO1's first), paced by the line words DMA'd to its TX FIFO.
const PIN_DATA0 = 0;
const DATA_BITS = 12;
const PIN_LINE_SYNC = 12;
const PIN_PIX_CLK = 13;
const PIO1_TXF0 = 0x50300010;

function parseArgs(argv) {
  const args = {};
  for (let i = 0; i < argv.length; i += 2) {
    if (!argv[i].startsWith('--') || i + 1 >= argv.length) {
      throw new Error(`bad argument: ${argv[i]}`);
    }
    args[argv[i].slice(2)] = argv[i + 1];
  }
  for (const need of ['bootrom', 'uf2', 'flash']) {
    if (!args[need]) throw new Error(`--${need} is required`);
  }
  return args;
}

function emit(event) {
  process.stdout.write(JSON.stringify(event) + '\n');
}

function fail(message) {
  process.stderr.write(`pico emulator: ${message}\n`);
  process.exit(2);
}

// ---- the flash image ------------------------------------------------------

/** The uf2's blocks written into an erased image (what dragging the uf2 onto
 * the Pico's boot drive does). */
function imageFromUf2(uf2) {
  const image = new Uint8Array(FLASH_BYTES).fill(0xff);
  const view = new DataView(uf2.buffer, uf2.byteOffset, uf2.byteLength);
  if (uf2.length % 512 !== 0 || uf2.length === 0) throw new Error('not a uf2 file (size)');
  for (let off = 0; off < uf2.length; off += 512) {
    const magic0 = view.getUint32(off, true);
    const magic1 = view.getUint32(off + 4, true);
    const magicEnd = view.getUint32(off + 508, true);
    if (magic0 !== 0x0a324655 || magic1 !== 0x9e5d5157 || magicEnd !== 0x0ab16f30) {
      throw new Error(`not a uf2 file (block at ${off})`);
    }
    const target = view.getUint32(off + 12, true);
    const size = view.getUint32(off + 16, true);
    if (target < FLASH_BASE || target + size > FLASH_BASE + FLASH_BYTES || size > 476) {
      throw new Error(`uf2 block outside the flash: 0x${target.toString(16)}`);
    }
    image.set(uf2.subarray(off + 32, off + 32 + size), target - FLASH_BASE);
  }
  return image;
}

/** The flash image file: created from the uf2 when absent; every program
 * and erase written through at once, as the chip's cells keep it. */
class FlashFile {
  constructor(path, uf2Path) {
    if (!fs.existsSync(path)) {
      const image = imageFromUf2(fs.readFileSync(uf2Path));
      const tmp = `${path}.new`;
      fs.writeFileSync(tmp, image);
      fs.renameSync(tmp, path);
    }
    this.fd = fs.openSync(path, 'r+');
    const size = fs.fstatSync(this.fd).size;
    if (size !== FLASH_BYTES) throw new Error(`flash image ${path} is ${size} bytes, not ${FLASH_BYTES}`);
    this.image = new Uint8Array(FLASH_BYTES);
    fs.readSync(this.fd, this.image, 0, FLASH_BYTES, 0);
  }

  writeThrough(offset, length) {
    fs.writeSync(this.fd, this.image, offset, length, offset);
  }
}

// ---- the serial flash behind the SSI --------------------------------------

// W25Q16JV: JEDEC manufacturer Winbond, memory type, capacity 2^21.
const JEDEC_ID = [0xef, 0x40, 0x15];

/** The NOR flash's command interpreter: one transaction per chip select. */
class SerialFlash {
  constructor(flashFile, chipFlash, uniqueId) {
    this.file = flashFile;
    this.chipFlash = chipFlash; // what XIP reads (rp2040js maps it at 0x10000000)
    this.uniqueId = uniqueId;
    this.writeEnabled = false;
    this.selected = false;
    this.bytes = [];
    this.programmed = 0;
    this.erased = 0;
  }

  select() {
    this.selected = true;
    this.bytes = [];
  }

  deselect() {
    if (this.selected) this.finish();
    this.selected = false;
    this.bytes = [];
  }

  /** One byte in (MOSI), one byte out (MISO). */
  transfer(mosi) {
    const b = this.bytes;
    b.push(mosi);
    const n = b.length; // this byte's place in the transaction, from 1
    const cmd = b[0];
    const address = () => ((b[1] << 16) | (b[2] << 8) | b[3]) % FLASH_BYTES;
    switch (cmd) {
      case 0x03: // read data
        return n > 4 ? this.image[(address() + n - 5) % FLASH_BYTES] : 0;
      case 0x0b: // fast read: one dummy byte
        return n > 5 ? this.image[(address() + n - 6) % FLASH_BYTES] : 0;
      case 0x9f: // JEDEC ID
        return n >= 2 && n <= 4 ? JEDEC_ID[n - 2] : 0;
      case 0x4b: // unique ID: four dummy bytes, then 64 bits
        return n >= 6 && n <= 13 ? this.uniqueId[n - 6] : 0;
      case 0x05: // status register 1: never busy (programs and erases complete at once); WEL
        return this.writeEnabled ? 0x02 : 0x00;
      case 0x35: // status register 2: QE set, as boot2 leaves it
        return 0x02;
      case 0x15: // status register 3
        return 0x00;
      default:
        return 0;
    }
  }

  get image() {
    return this.file.image;
  }

  /** A command takes effect when its chip select rises, as on the part. */
  finish() {
    const b = this.bytes;
    if (b.length === 0) return;
    const cmd = b[0];
    const address = b.length >= 4 ? ((b[1] << 16) | (b[2] << 8) | b[3]) % FLASH_BYTES : 0;
    switch (cmd) {
      case 0x06:
        this.writeEnabled = true;
        return;
      case 0x04:
        this.writeEnabled = false;
        return;
      case 0x02: { // page program: AND into the page, wrapping within it
        if (!this.writeEnabled || b.length < 5) break;
        const page = address & ~0xff;
        const data = b.slice(4).slice(-256);
        const start = b.length - 4 > 256 ? 0 : address & 0xff;
        for (let i = 0; i < data.length; i++) {
          const at = page + ((start + i) & 0xff);
          this.image[at] &= data[i];
        }
        this.commit(page, 256);
        this.programmed += data.length;
        break;
      }
      case 0x20: // 4 kB sector
      case 0x52: // 32 kB block
      case 0xd8: { // 64 kB block
        if (!this.writeEnabled || b.length !== 4) break;
        const size = cmd === 0x20 ? 4096 : cmd === 0x52 ? 32768 : 65536;
        const start = address & ~(size - 1);
        this.image.fill(0xff, start, start + size);
        this.commit(start, size);
        this.erased += size;
        break;
      }
      case 0xc7:
      case 0x60:
        if (!this.writeEnabled || b.length !== 1) break;
        this.image.fill(0xff);
        this.commit(0, FLASH_BYTES);
        this.erased += FLASH_BYTES;
        break;
      case 0x01:
      case 0x31:
      case 0x11: // write status registers: accepted, nothing to keep
        break;
      default:
        return; // reads, IDs, resets, the XIP mode bits: nothing changes
    }
    this.writeEnabled = false;
  }

  commit(offset, length) {
    this.chipFlash.set(this.image.subarray(offset, offset + length), offset);
    this.file.writeThrough(offset, length);
  }
}

// The SSI's registers (RP2040 datasheet 4.10.13) that the boot ROM, boot2 and
// the SDK's flash functions use; each byte written to DR0 is clocked through
// the flash at once (its answer queued for DR0 reads).
const SSI_CTRLR0 = 0x00;
const SSI_SSIENR = 0x08;
const SSI_TXFLR = 0x20;
const SSI_RXFLR = 0x24;
const SSI_SR = 0x28;
const SSI_DR0 = 0x60;
const SSI_SR_TFNF = 0x02;
const SSI_SR_TFE = 0x04;
const SSI_SR_RFNE = 0x08;

class SSI extends BasePeripheral {
  constructor(chip, flash, chipSelect) {
    super(chip, 'SSI');
    this.flash = flash;
    this.chipSelect = chipSelect; // the IO_QSPI override of SS
    this.regs = new Map();
    this.rx = [];
    this.hardwareIdle = true; // with SS driven by the SSI, a poll that found it idle ends a transaction
  }

  readUint32(offset) {
    switch (offset) {
      case SSI_TXFLR:
        return 0;
      case SSI_RXFLR:
        return Math.min(this.rx.length, 16);
      case SSI_SR:
        this.hardwareIdle = true;
        return SSI_SR_TFE | SSI_SR_TFNF | (this.rx.length ? SSI_SR_RFNE : 0);
      case SSI_DR0:
        return this.rx.length ? this.rx.shift() : 0;
      case 0x58: // IDR
        return 0x51535049;
      case 0x5c: // SSI_COMP_VERSION
        return 0x3430312a;
      default:
        return this.regs.get(offset) ?? 0;
    }
  }

  writeUint32(offset, value) {
    switch (offset) {
      case SSI_DR0: {
        const forced = this.chipSelect.forced();
        if (forced === null) {
          // SS follows the SSI: a transfer after the FIFO drained is a new transaction.
          if (this.hardwareIdle) {
            this.flash.deselect();
            this.flash.select();
            this.hardwareIdle = false;
          }
        }
        // With the chip select held high the byte is still clocked out (and a
        // byte clocked in), but the flash does not listen.
        const miso = forced === 'high' ? 0xff : this.flash.transfer(value & 0xff);
        // Transmit-and-receive mode keeps the answers; transmit-only drops them.
        const tmod = ((this.regs.get(SSI_CTRLR0) ?? 0) >> 8) & 3;
        if (tmod !== 1 && this.rx.length < 16) this.rx.push(miso);
        return;
      }
      case SSI_SSIENR:
        if (!(value & 1)) {
          this.rx = [];
          if (this.chipSelect.forced() === null) this.flash.deselect();
          this.hardwareIdle = true;
        }
        this.regs.set(offset, value);
        return;
      default:
        this.regs.set(offset, value);
    }
  }
}

// IO_QSPI: the SDK and the boot ROM drive the flash's chip select by hand
// through GPIO_QSPI_SS_CTRL's OUTOVER (2 low, 3 high, 0 the SSI's).
class IOQSPI extends BasePeripheral {
  constructor(chip, flash) {
    super(chip, 'IO_QSPI');
    this.flash = flash;
    this.regs = new Map();
  }

  forced() {
    const outover = ((this.regs.get(0x0c) ?? 0) >> 8) & 3;
    return outover === 2 ? 'low' : outover === 3 ? 'high' : null;
  }

  readUint32(offset) {
    return this.regs.get(offset) ?? 0;
  }

  writeUint32(offset, value) {
    const before = this.forced();
    this.regs.set(offset, value);
    if (offset !== 0x0c) return;
    const after = this.forced();
    if (after === 'low' && before !== 'low') this.flash.select();
    if (after !== 'low' && before === 'low') this.flash.deselect();
  }
}

// VREG_AND_CHIP_RESET: CHIP_RESET tells the firmware how the chip last came
// out of reset (machine.reset_cause()).
const HAD_POR = 1 << 8;

class VregAndChipReset extends BasePeripheral {
  constructor(chip, chipReset) {
    super(chip, 'VREG_AND_CHIP_RESET');
    this.regs = new Map([[0x00, 0xb1], [0x04, 0x91], [0x08, chipReset]]);
  }

  readUint32(offset) {
    return this.regs.get(offset) ?? 0;
  }

  writeUint32(offset, value) {
    if (offset === 0x08) {
      // PSM_RESTART_FLAG is the only writable bit; the HAD_* bits are read-only.
      const keep = this.regs.get(0x08) & ~(1 << 24);
      this.regs.set(0x08, keep | (value & (1 << 24)));
      return;
    }
    this.regs.set(offset, value);
  }
}

// Core 1, as far as core 0 can see it: rp2040js runs one core, and leaves
// SIO's inter-core FIFO out (every read 0xffffffff). Core 1 sits in the boot
// ROM's wait for a launch: out of reset it pushes a 0 to core 0; then it
// echoes each word core 0 pushes (the launch handshake). MicroPython resets
// core 1 at every soft reset (multicore_reset_core1 waits for that 0); code
// launched on core 1 (_thread) does not run here.
const SIO_FIFO_ST = 0x50;
const SIO_FIFO_WR = 0x54;
const SIO_FIFO_RD = 0x58;
const FIFO_ST_VLD = 0x1;
const FIFO_ST_RDY = 0x2;
const FIFO_ST_ROE = 0x8; // read while empty (sticky, cleared by a write to FIFO_ST)
const FIFO_DEPTH = 8;
const PSM_FRCE_OFF = 0x04;
const PSM_PROC1 = 1 << 16;

function withCore1(chip) {
  const { sio } = chip;
  const fromCore1 = [];
  let roe = false;
  const read = sio.readUint32.bind(sio);
  const write = sio.writeUint32.bind(sio);
  sio.readUint32 = (offset) => {
    if (offset === SIO_FIFO_ST) return (fromCore1.length ? FIFO_ST_VLD : 0) | FIFO_ST_RDY | (roe ? FIFO_ST_ROE : 0);
    if (offset === SIO_FIFO_RD) {
      if (fromCore1.length) return fromCore1.shift();
      roe = true;
      return 0;
    }
    return read(offset);
  };
  sio.writeUint32 = (offset, value) => {
    if (offset === SIO_FIFO_WR) {
      if (fromCore1.length < FIFO_DEPTH) fromCore1.push(value >>> 0); // the ROM's echo
    } else if (offset === SIO_FIFO_ST) {
      roe = false;
    } else {
      write(offset, value);
    }
  };
  const psm = chip.peripherals[0x40010];
  const psmWrite = psm.writeUint32.bind(psm);
  psm.writeUint32 = (offset, value) => {
    const wasOff = offset === PSM_FRCE_OFF && psm.frceOff & PSM_PROC1;
    psmWrite(offset, value);
    if (wasOff && !(psm.frceOff & PSM_PROC1)) {
      fromCore1.length = 0; // out of reset: its ROM says so
      fromCore1.push(0);
    }
  };
}

const UARTDR = 0x0;
const UARTTXINTR = 1 << 5;

/** A PL011's transmit interrupt, as the chip raises it. rp2040js raises it
 * on every check and never lets it fall (its TX FIFO is a to-do), so a
 * program that enables it (MicroPython's machine.UART does) never leaves
 * its handler: `UART(0)` hung the core. A PL011 raises it when its TX FIFO
 * falls to the trigger level, and a clear (ICR) holds until it falls there
 * again; here each byte written is sent at once, so each write raises it. */
function withUartTxInterrupt(uart) {
  uart.checkInterrupts = () => {
    uart.rp2040.setInterrupt(uart.irq, !!(uart.interruptStatus & uart.interruptMask));
  };
  const write = uart.writeUint32.bind(uart);
  uart.writeUint32 = (offset, value) => {
    write(offset, value);
    if (offset === UARTDR) {
      uart.interruptStatus |= UARTTXINTR;
      uart.checkInterrupts();
    }
  };
}

const TREQ_PERMANENT = 0x3f;

/** DMA at the chip's pace: a channel makes one transfer a system clock cycle
 * while its request is up. rp2040js makes each at once, so a 16 kB copy took
 * no board time (MicroPython's rp2_dma.py expects 30-80 us: one word a
 * cycle is 33 us at 125 MHz). */
function withDmaPace(chip) {
  for (const channel of chip.dma.channels) {
    channel.scheduleTransfer = () => {
      if (channel.dma.dreq[channel.treqValue] || channel.treqValue === TREQ_PERMANENT) {
        channel.transferAlarm.schedule(NS_PER_CYCLE);
      } else {
        const delay = channel.dma.getTimer(channel.treqValue);
        if (delay) channel.transferAlarm.schedule(delay * 1000);
      }
    };
  }
}

// ---- the board ------------------------------------------------------------

class Pico {
  constructor(args, cdcSocket) {
    this.bootrom = new Uint32Array(new Uint8Array(fs.readFileSync(args.bootrom)).buffer);
    if (this.bootrom.length !== 4096) throw new Error(`boot ROM ${args.bootrom} is not 16 kB`);
    this.flashFile = new FlashFile(args.flash, args.uf2);
    this.uniqueId = Uint8Array.from(Buffer.from((args['unique-id'] ?? 'e66038b7135c6a2f').padStart(16, '0'), 'hex'));
    this.socket = cdcSocket;
    this.hostIn = []; // Buffers from the host, not yet taken by the board
    this.hostInBytes = 0;
    this.pendingRead = null; // {endpoint, size}: the board's OUT transfer waiting for host bytes
    this.chip = null;
    this.nsBase = 0; // board time before the current chip (a reset starts a new clock at 0)
    this.resetRequest = null;
    this.powered = false;
    this.running = false;
    this.bootCount = 0;
    this.idleSinceMs = null; // when the core went to sleep with nothing due
    this.pinLevels = new Map(); // GPIO -> level driven from outside
    this.adcValues = new Map(); // ADC channel -> 12-bit reading
    this.watched = new Set(); // GPIOs whose edges are reported
    this.held = false; // stopped by the host, to change the wiring at an exact board time
    this.heldAtRise = false; // stopped at a watched pin's rise, until the host answers it
    this.edgeNs = null; // a PIO instruction's time, while it runs (its edges carry it)
    this.pioCycle = 0; // system clock cycles the PIO blocks have been stepped through
    this.holdOnRise = new Set(); // watched pins whose rise holds the chip for the host
    this.adcAlarms = []; // the ADC schedule's pending changes
    this.pinSchedule = []; // [ns, [[pin, level]...]] input changes not yet reached: the wires', kept across resets
    this.pinAlarms = [];
    this.pioDue = 0; // the cycle the chip's clock has reached, as the PIO sees it (pioCycle lags it in a hold)
    this.bus = false; // the front end wired (the host serves its frames)
    this.heldForFrame = false; // stopped at a frame's first line, until the host sends the frame
    this.busFrame = null; // {lines, pixels, data: Uint16Array}: the frame on the bus
    this.busLine = -1; // the line being clocked out, and its next pixel
    this.busPixel = 0;
    this.busValue = 0; // the level on DATA0..11 now
    this.stallEndNs = null; // the core hangs until then (a scripted stall of the control loop)
    this.stallAlarm = null;
  }

  get holding() {
    return this.held || this.heldAtRise || this.heldForFrame;
  }

  get nowNs() {
    return this.nsBase + (this.chip ? this.chip.clock.nanos : 0);
  }

  /** A chip out of reset: a power-on one, or one after a watchdog reset
   * that keeps the old chip's scratch registers and reason. */
  build(cause) {
    const old = this.chip;
    if (old) this.nsBase += old.clock.nanos;
    const chip = new RP2040();
    chip.logger = new ConsoleLogger(LogLevel.Error, true);
    chip.loadBootrom(this.bootrom); // (resets the core, which erases rp2040js's flash copy)
    chip.flash.set(this.flashFile.image);
    // The flash's chip select is pulled up (BOOTSEL not held): the boot ROM
    // samples it and boots from flash.
    // (Its pad comes out of reset with the input enabled and a pull-up, 0x5a;
    // rp2040js starts every pad with the input off.)
    chip.qspi[1].padValue = 0x5a;
    chip.qspi[1].setInputValue(true);
    const flash = new SerialFlash(this.flashFile, chip.flash, this.uniqueId);
    const ioqspi = new IOQSPI(chip, flash);
    chip.peripherals[0x18000 >>> 0] = new SSI(chip, flash, ioqspi);
    chip.peripherals[0x40018] = ioqspi;
    chip.peripherals[0x40064] = new VregAndChipReset(chip, cause === 'power-on' ? HAD_POR : 0);
    withCore1(chip);
    for (const uart of chip.uart) withUartTxInterrupt(uart);
    withDmaPace(chip);
    for (const pio of chip.pio) pio.run = () => {}; // stepped by the run loop, in cycles (stepPio)
    this.pioCycle = 0;
    this.pioDue = 0;
    this.stallEndNs = null; // (a reset ends a hang; one scripted for later goes with the old chip's clock)
    this.stallAlarm = null;
    const watchdog = chip.peripherals[0x40058];
    if (old && cause !== 'power-on') {
      const oldWatchdog = old.peripherals[0x40058];
      watchdog.scratchData.set(oldWatchdog.scratchData);
      watchdog.reason = oldWatchdog.reason;
      chip.sram.set(old.sram); // SRAM is not cleared by a reset
    }
    watchdog.onWatchdogTrigger = () => {
      this.resetRequest = watchdog.reason & 1 ? 'watchdog' : 'force';
      // The chip resets: its counter stops (rp2040js would re-arm the alarm
      // at the same instant, forever).
      watchdog.alarm.enable = false;
      watchdog.timer.enable = false;
    };
    this.flash = flash;
    this.chip = chip;
    this.attachUsb(chip);
    this.attachPins(chip);
    this.armPinSchedule();
    this.bootCount += 1;
    const event = { ev: 'boot', cause, us: Math.floor(this.nowNs / 1000), boots: this.bootCount };
    if (old && cause === 'watchdog') {
      // Where the stalled program was (the firmware's ELF names it), and its caller.
      event.pc = old.core.PC >>> 0;
      event.lr = old.core.registers[14] >>> 0;
    }
    emit(event);
  }

  /** The board's wiring on a new chip: what drives its inputs and ADC
   * (the levels last set survive a reset, as the wires do), and listeners
   * for the pins being watched. */
  attachPins(chip) {
    // Bank 0's pads out of reset as the datasheet has them (0x56: input
    // enabled, Schmitt trigger, pull-down, 4 mA); rp2040js starts them with
    // the input off (0x36), so a pin only a PIO program reads (the gate's
    // JMP pin, INTERLOCK_OK) read 0 whatever drove it.
    for (const g of chip.gpio) g.padValue = 0x56;
    for (const [pin, level] of this.pinLevels) chip.gpio[pin].setInputValue(level);
    // A pad's input sees the level on its pin: the chip's own while its
    // output is enabled (a program reads back a pin a PIO drives, as the
    // firmware reads GATE to sample the monitors during a pulse), else the
    // wiring's. rp2040js gives an input only what is set from outside.
    chip.gpio.forEach((g, pin) => {
      let driving = null;
      g.addListener(() => {
        const level = g.outputEnable ? g.outputValue : null;
        if (level === driving) return;
        driving = level;
        g.setInputValue(level !== null ? level : (this.pinLevels.get(pin) ?? false));
      });
    });
    for (const [channel, value] of this.adcValues) chip.adc.channelValues[channel] = value;
    this.adcAlarms = []; // (the old chip's, gone with its clock)
    for (const pin of this.watched) this.watchPin(chip, pin);
    if (this.bus) this.attachBus(chip);
    chip.pwm.channels.forEach((channel, slice) => {
      const write = channel.writeRegister.bind(channel);
      channel.writeRegister = (offset, value) => {
        write(offset, value);
        if (offset === 0x0c || offset === 0x10) {  // CC, TOP: a setpoint's duty
          emit({ ev: 'pwm', slice, cc: channel.cc >>> 0, top: channel.top, ns: Math.round(this.nowNs) });
        }
      };
    });
  }

  watchPin(chip, pin) {
    let last = chip.gpio[pin].outputEnable ? chip.gpio[pin].outputValue : null;
    chip.gpio[pin].addListener(() => {
      const g = chip.gpio[pin];
      const level = g.outputEnable ? g.outputValue : null; // (an input's changes are not the board's edges)
      if (level === null || level === last) return;
      last = level;
      const event = { ev: 'pin', pin, level: level ? 1 : 0, ns: Math.round(this.edgeNs ?? this.nowNs) };
      if (level && this.holdOnRise.has(pin)) {
        const m = this.sidesetMachine(chip, pin);
        if (m) event.sm = { x: m.x >>> 0, y: m.y >>> 0 };
        this.heldAtRise = true; // (until the host's release_rise)
      }
      emit(event);
    });
  }

  /** The enabled state machine whose side-set pins include `pin`. */
  sidesetMachine(chip, pin) {
    for (const pio of chip.pio) {
      for (const m of pio.machines) {
        if (m.enabled && m.sidesetCount && pin >= m.sidesetBase && pin < m.sidesetBase + m.sidesetCount) return m;
      }
    }
    return null;
  }

  /** The front end on a new chip: LINE_SYNC starts a line (the first of a
   * frame asks the host for the frame), each PIX_CLK rise puts the line's
   * next pixel on DATA0..11, as the detector's ADC does. */
  attachBus(chip) {
    this.heldForFrame = false; // (a frame asked of a chip that is gone is asked again by the new one)
    this.busFrame = null;
    this.busLine = -1;
    this.busValue = 0;
    for (let n = 0; n < DATA_BITS; n++) chip.gpio[PIN_DATA0 + n].setInputValue(false);
    const rising = (pin, then) => {
      const g = chip.gpio[pin];
      let last = false;
      g.addListener(() => {
        const level = g.outputEnable && g.outputValue;
        if (level === last) return;
        last = level;
        if (level) then();
      });
    };
    rising(PIN_LINE_SYNC, () => this.lineSync(chip));
    rising(PIN_PIX_CLK, () => this.nextPixel(chip));
  }

  /** A line starts: which one, from what the readout has taken of its DMA's
   * line words (each word a line, taken just before its LINE_SYNC). */
  lineSync(chip) {
    const tx = chip.dma.channels.find((c) => c.writeAddr === PIO1_TXF0);
    this.busPixel = 0;
    if (!tx) {
      this.busLine = -1;
      return;
    }
    const lines = tx.transCountReload;
    const pixels = (chip.readUint32(tx.readAddr) + 1) * 2;
    const taken = lines - tx.transCount - chip.pio[1].machines[0].txFIFO.itemCount;
    this.busLine = taken - 1;
    const f = this.busFrame;
    if (this.busLine === 0 || !f || f.lines !== lines || f.pixels !== pixels) {
      this.busFrame = null;
      this.busAsked = { lines, pixels };
      this.heldForFrame = true; // (until the host's frame)
      emit({ ev: 'frame', lines, pixels, ns: Math.round(this.edgeNs ?? this.nowNs) });
    }
  }

  nextPixel(chip) {
    const f = this.busFrame;
    const line = this.busLine;
    const k = this.busPixel++;
    const value = f && line >= 0 && line < f.lines && k < f.pixels ? f.data[line * f.pixels + k] & 0xfff : 0;
    const changed = value ^ this.busValue;
    if (!changed) return;
    this.busValue = value;
    for (let n = 0; n < DATA_BITS; n++) {
      if ((changed >> n) & 1) chip.gpio[PIN_DATA0 + n].setInputValue(((value >> n) & 1) === 1);
    }
  }

  wireBus() {
    if (this.bus) return;
    this.bus = true;
    if (this.chip) this.attachBus(this.chip);
  }

  serveFrame(lines, pixels, b64) {
    const bytes = Buffer.from(b64 ?? '', 'base64');
    if (!Number.isInteger(lines) || !Number.isInteger(pixels) || bytes.length !== lines * pixels * 2) {
      // A frame that cannot be put on the bus: the front end reads zeros
      // for the frame asked (the chip must not stay held for it).
      const asked = this.busAsked ?? { lines: 0, pixels: 0 };
      this.busFrame = { lines: asked.lines, pixels: asked.pixels, data: new Uint16Array(asked.lines * asked.pixels) };
      this.heldForFrame = false;
      this.wake();
      throw new Error(`frame: ${bytes.length} bytes for ${lines} lines of ${pixels} pixels: zeros served`);
    }
    const data = new Uint16Array(lines * pixels);
    for (let i = 0; i < data.length; i++) data[i] = bytes[2 * i] | (bytes[2 * i + 1] << 8);
    this.busFrame = { lines, pixels, data };
    this.heldForFrame = false;
    this.wake();
  }

  /** Whether a PIO state machine is enabled and not stalled (on a FIFO,
   * a pin or an IRQ, which only the core, DMA or a wire can change). */
  pioRunnable(chip) {
    for (const pio of chip.pio) {
      if (pio.stopped) continue;
      for (const m of pio.machines) if (m.enabled && !m.waiting) return true;
    }
    return false;
  }

  /** The PIO blocks for `cycles` system clock cycles, each state machine
   * an instruction at a time at its own clock divider, each instruction
   * taking its cycles and delay (rp2040js runs them on a wall-clock timer,
   * an instruction a step, delays and dividers ignored). */
  stepPio(chip, cycles) {
    // The chip's clock is at cycle `start` now (its tick for these cycles
    // comes after): the machines step on to `end`. A hold asked for by an
    // edge (a rise the host answers, a frame's first line) stops them at
    // that instruction: the rest of the batch is stepped after the hold,
    // each edge still timed at its own cycle.
    const start = this.pioDue;
    const end = start + cycles;
    this.pioDue = end;
    for (const pio of chip.pio) {
      if (pio.stopped) continue;
      for (const m of pio.machines) {
        if (!m.enabled) continue;
        if (m.nextAt === undefined || m.nextAt < this.pioCycle) m.nextAt = this.pioCycle;
        const div = (m.clockDivInt || 65536) + m.clockDivFrac / 256;
        while (m.nextAt < end) {
          const before = m.cycles;
          // (Its pins' edges are timed at this instruction's cycle, not the batch's start.)
          this.edgeNs = this.nowNs + (m.nextAt - start) * NS_PER_CYCLE;
          m.step();
          pio.checkChangedPins();
          this.edgeNs = null;
          if (m.waiting && m.cycles === before) {
            m.nextAt = end; // stalled: nothing of it moves until the core, DMA or a wire does
            break;
          }
          m.nextAt += Math.max(1, m.cycles - before) * div;
          if (this.holding) return; // (pioCycle stays where this batch began: the others step on later)
        }
      }
    }
    this.pioCycle = end;
  }

  scheduleAdc(points) {
    for (const alarm of this.adcAlarms) alarm.cancel();
    this.adcAlarms = [];
    const chip = this.chip;
    if (!chip) return;
    for (const [atNs, values] of points) {
      const apply = () => {
        for (const [ch, v] of Object.entries(values)) {
          const channel = Number(ch);
          const value = Math.max(0, Math.min(4095, Math.round(v)));
          this.adcValues.set(channel, value);
          chip.adc.channelValues[channel] = value;
        }
      };
      const alarm = this.atBoardTime(atNs, apply);
      if (alarm) this.adcAlarms.push(alarm);
    }
    this.wake();
  }

  /** `apply` at board time atNs (now if absent or past), on the chip's own
   * clock: an alarm fires between instructions, as a wire's edge lands.
   * The alarm (to cancel), or null when applied at once. */
  atBoardTime(atNs, apply) {
    const chip = this.chip;
    const delay = atNs === undefined || atNs === null ? 0 : atNs - this.nowNs;
    if (!chip || delay <= 0) {
      apply();
      return null;
    }
    const alarm = chip.clock.createAlarm(() => {
      if (this.chip === chip) apply();
    });
    alarm.schedule(delay);
    this.wake();
    return alarm;
  }

  setPins(levels, atNs) {
    const parsed = Object.entries(levels).map(([pin, level]) => [Number(pin), !!level]);
    for (const [pin] of parsed) {
      if (!Number.isInteger(pin) || pin < 0 || pin > 29) throw new Error(`no GPIO ${pin}`);
    }
    this.atBoardTime(atNs, () => {
      for (const [pin, level] of parsed) {
        this.pinLevels.set(pin, level);
        if (this.chip) this.chip.gpio[pin].setInputValue(level);
      }
    });
  }

  /** Input levels from those board times on, replacing any schedule not
   * yet reached. What the wires will do is theirs: it outlives a reset. */
  schedulePins(points) {
    const parsed = points.map(([atNs, levels]) => {
      const pins = Object.entries(levels).map(([pin, level]) => [Number(pin), !!level]);
      for (const [pin] of pins) {
        if (!Number.isInteger(pin) || pin < 0 || pin > 29) throw new Error(`no GPIO ${pin}`);
      }
      return [Number(atNs), pins];
    });
    this.pinSchedule = parsed.sort((a, b) => a[0] - b[0]);
    this.armPinSchedule();
  }

  armPinSchedule() {
    for (const alarm of this.pinAlarms) alarm.cancel();
    this.pinAlarms = [];
    const chip = this.chip;
    if (!chip) return;
    for (const point of this.pinSchedule) {
      const apply = () => {
        for (const [pin, level] of point[1]) {
          this.pinLevels.set(pin, level);
          chip.gpio[pin].setInputValue(level);
        }
        this.pinSchedule = this.pinSchedule.filter((p) => p !== point);
      };
      const alarm = this.atBoardTime(point[0], apply);
      if (alarm) this.pinAlarms.push(alarm);
    }
    this.wake();
  }

  /** The core hangs from board time atNs for forNs: it executes nothing,
   * takes no interrupt, feeds no watchdog, while the rest of the chip runs. */
  stall(atNs, forNs) {
    if (!Number.isFinite(forNs) || forNs <= 0) throw new Error(`stall of ${forNs} ns`);
    if (this.stallAlarm) this.stallAlarm.cancel();
    this.stallAlarm = this.atBoardTime(atNs, () => {
      this.stallAlarm = null;
      this.stallEndNs = this.nowNs + forNs;
      emit({ ev: 'stall', ns: Math.round(this.nowNs), for_ns: forNs });
    });
  }

  setAdc(values, atNs) {
    const parsed = Object.entries(values).map(([ch, v]) => [Number(ch), Math.max(0, Math.min(4095, Math.round(v)))]);
    for (const [ch] of parsed) {
      if (!Number.isInteger(ch) || ch < 0 || ch > 4) throw new Error(`no ADC channel ${ch}`);
    }
    this.atBoardTime(atNs, () => {
      for (const [ch, v] of parsed) {
        this.adcValues.set(ch, v);
        if (this.chip) this.chip.adc.channelValues[ch] = v;
      }
    });
  }

  watch(pins, holdOnRise) {
    for (const pin of pins) {
      if (holdOnRise && Number.isInteger(pin)) this.holdOnRise.add(pin);
      if (!Number.isInteger(pin) || pin < 0 || pin > 29) throw new Error(`no GPIO ${pin}`);
      if (this.watched.has(pin)) continue;
      this.watched.add(pin);
      if (this.chip) this.watchPin(this.chip, pin);
    }
  }

  attachUsb(chip) {
    const cdc = new USBCDC(chip.usbCtrl);
    this.cdc = cdc;
    this.pendingRead = null;
    cdc.onSerialData = (data) => {
      const ok = this.socket.write(Buffer.from(data));
      if (!ok || this.socket.writableLength > HOST_OUT_HIGH_WATER) this.hostSlow = true;
    };
    // Replaces USBCDC's OUT handler: an OUT transfer with no host bytes waits
    // for them (rp2040js completes it empty at once, which keeps the core
    // busy re-arming it and loses nothing but never lets it sleep).
    chip.usbCtrl.onEndpointRead = (endpoint, size) => {
      if (endpoint !== cdc.outEndpoint) return;
      this.pendingRead = { endpoint, size };
      this.feedBoard();
    };
  }

  fromHost(data) {
    this.hostIn.push(data);
    this.hostInBytes += data.length;
    if (this.hostInBytes > HOST_IN_HIGH_WATER) this.socket.pause();
    this.feedBoard();
    this.wake();
  }

  feedBoard() {
    if (!this.pendingRead || !this.hostInBytes || !this.chip) return;
    const { endpoint, size } = this.pendingRead;
    const take = Math.min(size, this.hostInBytes);
    const out = new Uint8Array(take);
    let filled = 0;
    while (filled < take) {
      const head = this.hostIn[0];
      const n = Math.min(head.length, take - filled);
      out.set(head.subarray(0, n), filled);
      filled += n;
      if (n === head.length) this.hostIn.shift();
      else this.hostIn[0] = head.subarray(n);
    }
    this.hostInBytes -= take;
    this.pendingRead = null;
    this.chip.usbCtrl.endpointReadDone(endpoint, out);
    if (this.hostInBytes <= HOST_IN_HIGH_WATER / 2) this.socket.resume();
  }

  powerOn() {
    if (this.powered) return;
    this.chip = null;
    this.powered = true;
    this.build('power-on');
    this.wake();
  }

  powerOff() {
    if (!this.powered) return;
    this.powered = false;
    this.flash.deselect();
    if (this.chip) this.nsBase += this.chip.clock.nanos;
    this.chip = null;
    this.idleSinceMs = null;
    emit({ ev: 'off', us: Math.floor(this.nowNs / 1000) });
  }

  wake() {
    if (this.idleSinceMs !== null && this.chip) {
      this.chip.clock.tick((performance.now() - this.idleSinceMs) * 1e6);
      this.idleSinceMs = null;
    }
    if (!this.running && this.powered) {
      this.running = true;
      setImmediate(() => this.run());
    }
  }

  /** Runs the chip for a slice of wall time, then lets Node's I/O in. Stops
   * (until woken) when the core sleeps with nothing due, or when the host
   * has not taken what the board sent. */
  run() {
    this.running = false;
    if (!this.powered || this.holding) return;
    if (this.hostSlow) {
      if (this.socket.writableLength > HOST_OUT_HIGH_WATER / 2) {
        this.socket.once('drain', () => { this.hostSlow = false; this.wake(); });
        return;
      }
      this.hostSlow = false;
    }
    const deadline = performance.now() + SLICE_MS;
    let idle = false;
    const { chip } = this;
    const { core, clock } = chip;
    outer: while (performance.now() < deadline) {
      for (let i = 0; i < 20000; i++) {
        if (this.stallEndNs !== null && this.nowNs >= this.stallEndNs) this.stallEndNs = null;
        if (this.stallEndNs !== null) {
          // Hung: time runs on to the hang's end, the next alarm (a timer,
          // DMA, the watchdog) or a state machine's next stride.
          let cycles = Math.max(1, Math.ceil((this.stallEndNs - this.nowNs) / NS_PER_CYCLE));
          if (clock.nextAlarm) cycles = Math.min(cycles, Math.max(1, Math.ceil(clock.nanosToNextAlarm / NS_PER_CYCLE)));
          if (this.pioRunnable(chip)) cycles = Math.min(cycles, PIO_STRIDE);
          this.stepPio(chip, cycles);
          clock.tick(cycles * NS_PER_CYCLE);
        } else if (core.waiting) {
          const runnable = this.pioRunnable(chip);
          if (!clock.nextAlarm && !runnable) {
            idle = true;
            break outer;
          }
          // Asleep: on to the next alarm at once, unless a state machine
          // runs meanwhile (then in steps it is stepped through).
          let cycles = clock.nextAlarm ? Math.max(1, Math.ceil(clock.nanosToNextAlarm / NS_PER_CYCLE)) : PIO_STRIDE;
          if (runnable) cycles = Math.min(cycles, PIO_STRIDE);
          this.stepPio(chip, cycles);
          clock.tick(cycles * NS_PER_CYCLE);
        } else {
          const cycles = core.executeInstruction();
          this.stepPio(chip, cycles);
          clock.tick(cycles * NS_PER_CYCLE);
        }
        if (this.resetRequest || this.hostSlow || this.holding) break outer;
      }
    }
    if (this.resetRequest) {
      const cause = this.resetRequest;
      this.resetRequest = null;
      this.flash.deselect();
      this.build(cause);
    }
    if (idle) {
      // Asleep with nothing due: woken by host bytes or a control command,
      // and the time it slept passes on the board as on the wall.
      this.idleSinceMs = performance.now();
    } else {
      this.wake();
    }
  }
}

function main() {
  let args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (e) {
    fail(e.message);
  }
  let socket;
  try {
    socket = new net.Socket({ fd: Number(args['usb-fd'] ?? 3), readable: true, writable: true });
  } catch (e) {
    fail(`descriptor ${args['usb-fd'] ?? 3} is not the board's USB socket: ${e.message}`);
  }
  let pico;
  try {
    pico = new Pico(args, socket);
  } catch (e) {
    fail(e.message);
  }
  socket.on('data', (data) => pico.fromHost(data));
  socket.on('error', () => {});
  const report = () => emit({ ev: 'time', us: Math.floor(pico.nowNs / 1000), wall_ms: Math.round(performance.now()) });
  setInterval(report, 50).unref();
  const commands = readline.createInterface({ input: process.stdin });
  commands.on('line', (line) => {
    let msg;
    try {
      msg = JSON.parse(line);
    } catch {
      emit({ ev: 'error', error: `not JSON: ${line.slice(0, 80)}` });
      return;
    }
    switch (msg.op) {
      case 'power':
        if (msg.on) pico.powerOn();
        else pico.powerOff();
        break;
      case 'time':
        report();
        break;
      case 'hold':
        pico.held = true;
        emit({ ev: 'held', ns: Math.round(pico.nowNs) });
        break;
      case 'release':
        pico.held = false;
        pico.wake();
        break;
      case 'release_rise':
        pico.heldAtRise = false;
        pico.wake();
        break;
      case 'bus':
        if (msg.on) pico.wireBus();
        break;
      case 'frame':
        try {
          pico.serveFrame(msg.lines, msg.pixels, msg.data);
        } catch (e) {
          emit({ ev: 'error', error: e.message });
        }
        break;
      case 'adc_schedule':
        pico.scheduleAdc(msg.points ?? []);
        break;
      case 'pins_schedule':
        try {
          pico.schedulePins(msg.points ?? []);
        } catch (e) {
          emit({ ev: 'error', error: e.message });
        }
        break;
      case 'pins':
      case 'adc':
      case 'watch':
        try {
          if (msg.op === 'pins') pico.setPins(msg.levels ?? {}, msg.at_ns);
          else if (msg.op === 'adc') pico.setAdc(msg.values ?? {}, msg.at_ns);
          else pico.watch(msg.pins ?? [], !!msg.hold_on_rise);
        } catch (e) {
          emit({ ev: 'error', error: `${msg.op}: ${e.message}` });
        }
        break;
      case 'stall':
        try {
          pico.stall(msg.at_ns, Number(msg.for_ns));
        } catch (e) {
          emit({ ev: 'error', error: e.message });
        }
        break;
      case 'debug': {
        const c = pico.chip;
        emit({ ev: 'debug', pc: c ? c.core.PC.toString(16) : null, waiting: c ? c.core.waiting : null,
               us: Math.floor(pico.nowNs / 1000), programmed: pico.flash.programmed, erased: pico.flash.erased });
        break;
      }
      case 'quit':
        process.exit(0);
        break;
      default:
        emit({ ev: 'error', error: `unknown op: ${msg.op}` });
    }
  });
  commands.on('close', () => process.exit(0));
  pico.powerOn();
}

main();
