# Dose physics and accounting (SPEC 3). MicroPython-compatible: plain asserts.
from pulsefw import dose


def close(a, b, rel):
    return abs(a - b) <= rel * abs(b)


def test_worked_check_of_the_spec():
    # 80 kV, 20 mA, 10 ms pulses, 15 pps, reference point at 0.60 m:
    # 39 uGy per pulse, about 35 mGy/min; about 50 mA reaches 88 mGy/min.
    g = dose.Geometry(256, 256)
    assert close(g.pulse_kerma_ugy(80, 20, 10), 39.0, 0.005)
    assert close(g.rate_mgy_min(80, 20, 10, 15), 35.1, 0.005)
    assert close(g.max_ma(80, 10, 15, dose.CAP_NORMAL_MGY_MIN), 50.0, 0.01)
    assert close(g.rate_mgy_min(80, g.max_ma(80, 10, 15, 88.0), 10, 15), 88.0, 1e-9)


def test_tube_output_follows_the_table_and_its_power_law():
    for kv, y in zip(dose.TUBE_OUTPUT_KV, dose.TUBE_OUTPUT_UGY_PER_MAS):
        assert close(dose.tube_output_ugy_per_mas(kv), y, 1e-9)
    last = 0.0
    for kv in range(40, 126):
        y = dose.tube_output_ugy_per_mas(kv)
        assert y > last  # more kV, more output, everywhere in the hardware range
        last = y
        if 60 <= kv <= 120:
            assert close(y, 0.0242 * kv ** 1.82, 0.05)


def test_kerma_area_product_is_kerma_times_field_at_any_distance():
    g = dose.Geometry(256, 256)  # 102.4 mm square at the detector, SID 1 m
    k = g.pulse_kerma_ugy(80, 20, 10)
    kap = g.pulse_kap_ugy_m2(k)
    field_ref = 0.1024 * 0.1024 * 0.6 * 0.6  # field at the reference point, m^2
    assert close(kap, k * field_ref, 1e-9)
    near = dose.Geometry(256, 256, reference_point_m=0.5)
    assert close(near.pulse_kap_ugy_m2(near.pulse_kerma_ugy(80, 20, 10)), kap, 1e-9)


def test_bad_geometry_is_refused():
    for ref in (0.0, 1.5):
        try:
            dose.Geometry(256, 256, reference_point_m=ref)
        except ValueError:
            continue
        raise AssertionError("accepted reference point %s" % ref)


def test_accumulator_is_exact_over_long_exams():
    acc = dose.Accumulator()
    for _ in range(100000):
        acc.add(39.01)
    assert close(acc.value(), 3901000.0, 1e-9)
    acc.reset()
    assert acc.value() == 0


def test_five_minute_alarm_repeats_on_switch_time():
    d = dose.DoseAccount()
    alarms = []
    step_us = 66_667  # one pulse period at 15 pps
    t = 0
    while t < 21 * 60 * 1_000_000:
        if d.add_switch_time(step_us):
            alarms.append(t + step_us)
        t += step_us
    assert len(alarms) == 4
    for i, at in enumerate(alarms):
        assert 0 <= at - (i + 1) * 300_000_000 < step_us
    d.reset()
    assert d.switch_s == 0 and not d.add_switch_time(299_999_999) and d.add_switch_time(1)


def test_fluoro_time_is_shown_in_tenths_of_a_minute_rounded_down():
    d = dose.DoseAccount()
    d.add_switch_time(5_999_999)
    assert d.fluoro_time_min_tenths() == 0
    d.add_switch_time(1)
    assert d.fluoro_time_min_tenths() == 1
    d.add_switch_time(54_000_000)
    assert d.fluoro_time_min_tenths() == 10  # 1.0 min


def test_dose_notifications_are_off_by_default_then_3_gy_and_every_gy():
    quiet = dose.DoseAccount()
    loud = dose.DoseAccount(notify=True)
    crossings = []
    for _ in range(6000):
        quiet.add_pulse(1000.0, 0.0)
        if loud.add_pulse(1000.0, 0.0):
            crossings.append(loud.kerma_mgy())
    assert quiet.pulses == 6000 and not quiet.notify
    assert crossings == [3000.0, 4000.0, 5000.0, 6000.0]
